"""Automatic device management configurations, the bulk registry call and the statistics with
azure-iot-hub 2.7.0 (IoTHubConfigurationManager, IoTHubRegistryManager).

The hub runs with a short --configuration-interval, so the script waits (bounded) for the
evaluation to reach the twins, as a client of Azure IoT Hub would.
"""

import time

from azure.iot.hub import IoTHubConfigurationManager, IoTHubRegistryManager
from azure.iot.hub.models import (
    Configuration,
    ConfigurationContent,
    ConfigurationMetrics,
    ConfigurationQueriesTestInput,
    ExportImportDevice,
    Twin,
)

from common import check, expect_http_error, run, service_cs

PREFIX = "py-cfg-"


def wait_for(what, probe, timeout=20.0):
    """Polls probe() until it returns a truthy value or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def desired(registry, device_id, key):
    return (registry.get_twin(device_id).properties.desired or {}).get(key)


def configuration(config_id, target, priority, window):
    return Configuration(
        id=config_id,
        schema_version="1.0",
        labels={"owner": "casement-sdk-test"},
        content=ConfigurationContent(device_content={"properties.desired.maintenance": {"window": window}}),
        target_condition=target,
        priority=priority,
        metrics=ConfigurationMetrics(
            queries={
                "lost": "SELECT deviceId FROM devices WHERE configurations.[[%s]].status = 'Targeted'" % config_id
            }
        ),
    )


def main():
    registry = IoTHubRegistryManager.from_connection_string(service_cs())
    configs = IoTHubConfigurationManager.from_connection_string(service_cs())

    # Bulk create (with tags), statistics.
    devices = [
        ExportImportDevice(id=PREFIX + "a", import_mode="create", status="enabled", tags={"env": "prod"}),
        ExportImportDevice(id=PREFIX + "b", import_mode="create", status="enabled", tags={"env": "prod", "ring": "canary"}),
        ExportImportDevice(id=PREFIX + "c", import_mode="create", status="disabled"),
    ]
    result = registry.bulk_create_or_update_devices(devices)
    check("bulk create", result.is_successful and not result.errors, result.as_dict())
    check("bulk create tags", registry.get_twin(PREFIX + "a").tags == {"env": "prod"})
    again = registry.bulk_create_or_update_devices([ExportImportDevice(id=PREFIX + "a", import_mode="create")])
    check(
        "bulk create existing → error entry",
        not again.is_successful and again.errors and again.errors[0].error_code == "DeviceAlreadyExists",
        again.as_dict(),
    )
    stats = registry.get_device_registry_statistics()
    check(
        "device registry statistics",
        stats.total_device_count >= 3 and stats.disabled_device_count >= 1,
        stats.as_dict(),
    )
    service = registry.get_service_statistics()
    check("service statistics", service.connected_device_count is not None, service.as_dict())

    # Configurations: create, get, list.
    base = configs.create_configuration(configuration(PREFIX + "base", "tags.env = 'prod'", 1, "base"))
    check("configuration create", base.id == PREFIX + "base" and base.etag, base.as_dict())
    canary = configs.create_configuration(configuration(PREFIX + "canary", "tags.ring = 'canary'", 5, "canary"))
    got = configs.get_configuration(PREFIX + "base")
    check(
        "configuration get",
        got.content.device_content == {"properties.desired.maintenance": {"window": "base"}}
        and got.system_metrics.queries.get("targetedCount"),
        got.as_dict(),
    )
    listed = [c.id for c in configs.get_configurations()]
    check("configuration list", PREFIX + "base" in listed and PREFIX + "canary" in listed, listed)
    check("configuration list max_count", len(configs.get_configurations(1)) == 1)

    # Test queries.
    ok = configs.test_configuration_queries(
        ConfigurationQueriesTestInput(
            target_condition="tags.env = 'prod'",
            custom_metric_queries={"m": "SELECT deviceId FROM devices WHERE configurations.[[x]].status = 'Applied'"},
        )
    )
    bad = configs.test_configuration_queries(
        ConfigurationQueriesTestInput(target_condition="tags.env = ", custom_metric_queries={"m": "SELECT FROM"})
    )
    check(
        "configuration test queries",
        not ok.target_condition_error
        and not ok.custom_metric_query_errors
        and bad.target_condition_error
        and "m" in bad.custom_metric_query_errors,
        {"ok": ok.as_dict(), "bad": bad.as_dict()},
    )

    # Evaluation: the higher priority wins on the device both target.
    # (An evaluation may fall between the two creations, so wait for the final state.)
    a = wait_for("a", lambda: desired(registry, PREFIX + "a", "maintenance") == {"window": "base"})
    b = wait_for("b", lambda: desired(registry, PREFIX + "b", "maintenance") == {"window": "canary"})
    check("evaluation applies content", a, desired(registry, PREFIX + "a", "maintenance"))
    check("higher priority wins", b, desired(registry, PREFIX + "b", "maintenance"))

    def counted():
        c = configs.get_configuration(PREFIX + "base")
        expected = {"targetedCount": 2, "appliedCount": 1}
        return c if c.system_metrics.results == expected and c.metrics.results == {"lost": 1} else None

    counted_base = wait_for("metrics", counted)
    check(
        "systemMetrics counts",
        counted_base is not None
        and counted_base.system_metrics.results == {"targetedCount": 2, "appliedCount": 1}
        and counted_base.metrics.results == {"lost": 1},
        counted_base.as_dict() if counted_base else None,
    )

    # A device tagged later gets the content at the next evaluation.
    twin = registry.get_twin(PREFIX + "c")
    registry.update_twin(PREFIX + "c", Twin(tags={"env": "prod"}), twin.etag)
    c = wait_for("c", lambda: desired(registry, PREFIX + "c", "maintenance") == {"window": "base"})
    check("device tagged later gets content", c, desired(registry, PREFIX + "c", "maintenance"))

    # Update priority and target; a content change is refused.
    current = configs.get_configuration(PREFIX + "canary")
    current.priority = 0
    current.target_condition = "tags.ring = 'canary' OR tags.ring = 'beta'"
    updated = configs.update_configuration(current, current.etag)
    check(
        "configuration update priority and target",
        updated.priority == 0 and "beta" in updated.target_condition and updated.etag != current.etag,
        updated.as_dict(),
    )
    b = wait_for("b", lambda: desired(registry, PREFIX + "b", "maintenance") == {"window": "base"})
    check("lower priority gives way", b, desired(registry, PREFIX + "b", "maintenance"))
    changed = configs.get_configuration(PREFIX + "canary")
    changed.content = ConfigurationContent(device_content={"properties.desired.maintenance": {"window": "other"}})
    expect_http_error(
        "configuration content change → 400", 400, lambda: configs.update_configuration(changed, changed.etag)
    )
    expect_http_error(
        "configuration stale etag → 412", 412, lambda: configs.update_configuration(changed, current.etag)
    )
    expect_http_error(
        "configuration create existing → 409",
        409,
        lambda: configs.create_configuration(configuration(PREFIX + "base", "tags.env = 'prod'", 1, "base")),
    )

    # Delete.
    configs.delete_configuration(PREFIX + "canary")
    configs.delete_configuration(PREFIX + "base", configs.get_configuration(PREFIX + "base").etag)
    expect_http_error(
        "configuration delete → get 404", 404, lambda: configs.get_configuration(PREFIX + "base")
    )
    kept = desired(registry, PREFIX + "a", "maintenance")
    check("deleting keeps desired properties", kept == {"window": "base"}, kept)

    # Bulk delete.
    gone = registry.bulk_create_or_update_devices(
        [ExportImportDevice(id=PREFIX + s, import_mode="delete") for s in "abc"]
    )
    check("bulk delete", gone.is_successful, gone.as_dict())


if __name__ == "__main__":
    run(main)
