"""The 404 paths with azure-iot-hub 2.7.0: unknown device (get, twin, update, delete, method)
and a known device that is offline (404103)."""

from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, Twin, TwinProperties

from common import check, expect_http_error, run, service_cs


def main():
    registry = IoTHubRegistryManager.from_connection_string(service_cs())
    expect_http_error("get_device unknown → 404", 404, lambda: registry.get_device("nosuch"))
    response = expect_http_error("get_twin unknown → 404", 404, lambda: registry.get_twin("nosuch"))
    if response is not None:
        check(
            "404 carries ErrorCode:DeviceNotFound",
            response.headers.get("iothub-errorcode") == "DeviceNotFound"
            and "ErrorCode:DeviceNotFound;nosuch" in response.text,
            {"headers": dict(response.headers), "body": response.text},
        )
    expect_http_error(
        "update_twin unknown → 404",
        404,
        lambda: registry.update_twin("nosuch", Twin(properties=TwinProperties(desired={"a": 1}))),
    )
    expect_http_error("delete_device unknown → 404", 404, lambda: registry.delete_device("nosuch"))
    method = CloudToDeviceMethod(method_name="reboot", payload=None, response_timeout_in_seconds=5)
    expect_http_error(
        "invoke_device_method unknown → 404", 404, lambda: registry.invoke_device_method("nosuch", method)
    )
    registry.create_device_with_sas("py-offline", None, None, "enabled")
    response = expect_http_error(
        "invoke_device_method offline → 404", 404, lambda: registry.invoke_device_method("py-offline", method)
    )
    if response is not None:
        check(
            "offline is DeviceNotOnline",
            response.headers.get("iothub-errorcode") == "DeviceNotOnline",
            dict(response.headers),
        )
    registry.delete_device("py-offline")


if __name__ == "__main__":
    run(main)
