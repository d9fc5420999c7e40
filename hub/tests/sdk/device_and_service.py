"""Device connect, twin get, reported patch, desired-patch notification, direct method, query,
device create and delete — with azure-iot-device 2.14.0 and azure-iot-hub 2.7.0, unmodified."""

import threading
import time

from azure.iot.device import IoTHubDeviceClient, MethodResponse
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, QuerySpecification, Twin, TwinProperties

from common import ca_pem, check, run, service_cs

DEVICE = "py-sdk-dev"


def main():
    registry = IoTHubRegistryManager.from_connection_string(service_cs())

    # Device create: no keys given, the hub generates them; Python accepts only 200.
    device = registry.create_device_with_sas(DEVICE, None, None, "enabled")
    key = device.authentication.symmetric_key.primary_key
    check("device create", device.device_id == DEVICE and bool(key), device.device_id)
    fetched = registry.get_device(DEVICE)
    check("device get", fetched.status == "enabled" and fetched.connection_state == "Disconnected",
          fetched.connection_state)

    # Device connect over MQTT/TLS on 8883, trusting the hub's CA.
    client = IoTHubDeviceClient.create_from_connection_string(
        f"HostName=localhost;DeviceId={DEVICE};SharedAccessKey={key}",
        server_verification_cert=ca_pem(),
        connection_retry=False,
    )
    desired_patches = []
    got_patch = threading.Event()

    def on_patch(patch):
        desired_patches.append(patch)
        got_patch.set()

    method_requests = []

    def on_method(request):
        method_requests.append((request.name, request.payload))
        client.send_method_response(
            MethodResponse.create_from_method_request(request, 200, {"rebooting": True})
        )

    client.on_twin_desired_properties_patch_received = on_patch
    client.on_method_request_received = on_method
    client.connect()
    check("device connect", client.connected)

    twin = client.get_twin()
    check("twin get", twin["desired"]["$version"] == 1 and twin["reported"]["$version"] == 1, twin)

    client.patch_twin_reported_properties({"iothubDM": {"reboot": {"lastReboot": "2026-11-29T01:04:10.000Z"}}})
    service_twin = registry.get_twin(DEVICE)
    reported = service_twin.properties.reported
    check(
        "reported patch",
        reported["iothubDM"]["reboot"]["lastReboot"] == "2026-11-29T01:04:10.000Z"
        and reported["$version"] == 2,
        reported,
    )
    check("twin connectionState", service_twin.connection_state == "Connected", service_twin.connection_state)

    # Desired patch from the service → notification with $version.
    patch = Twin(properties=TwinProperties(desired={"fw": "2.0"}))
    updated = registry.update_twin(DEVICE, patch, service_twin.etag)
    check("service update_twin", updated.properties.desired["fw"] == "2.0", updated.properties.desired)
    got_patch.wait(10)
    check(
        "desired-patch notification",
        desired_patches[:1] == [{"fw": "2.0", "$version": 2}],
        desired_patches,
    )

    # Direct method.
    result = registry.invoke_device_method(
        DEVICE,
        CloudToDeviceMethod(method_name="reboot", payload={"policy": "p1"}, response_timeout_in_seconds=30),
    )
    check(
        "direct method",
        result.status == 200 and result.payload == {"rebooting": True}
        and method_requests == [("reboot", {"policy": "p1"})],
        {"status": result.status, "payload": result.payload, "requests": method_requests},
    )

    # Query, with paging headers read by the SDK.
    for i in range(3):
        registry.create_device_with_sas(f"py-sdk-extra-{i}", None, None, "enabled")
    page = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices"), None, 2)
    check(
        "query page 1",
        len(page.items) == 2 and page.type == "twin" and page.continuation_token,
        {"n": len(page.items), "type": page.type, "token": page.continuation_token},
    )
    rest = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices"), page.continuation_token, 2)
    check(
        "query last page",
        len(rest.items) == 2 and not rest.continuation_token,
        {"n": len(rest.items), "token": rest.continuation_token},
    )
    counted = registry.query_iot_hub(
        QuerySpecification(query="SELECT COUNT() AS n FROM devices WHERE connectionState = 'Connected'")
    )
    # The SDK deserializes every item as a Twin; projections land in additional_properties.
    items = [getattr(i, "additional_properties", i) for i in counted.items]
    check("query count", items == [{"n": 1}] and counted.type == "raw", items)

    client.shutdown()

    # Device delete: 204, then gone.
    registry.delete_device(DEVICE)
    try:
        registry.get_device(DEVICE)
        check("device delete", False, "still there")
    except Exception as e:
        check("device delete", getattr(e.response, "status_code", None) == 404, str(e))
    for i in range(3):
        registry.delete_device(f"py-sdk-extra-{i}")


if __name__ == "__main__":
    run(main)
