//! What the hub passes on of a device's direct-method answer, as Azure IoT Hub does.
//!
//! A device must answer with JSON (or an empty body, which the caller sees as `null`) of at
//! most 128 KB ([`MAX_METHOD_PAYLOAD_BYTES`]). Azure refuses anything else to the caller with
//! 502 and error 502101, "Payload is not a valid document of type application/json"
//! (Azure/azure-iot-sdk-c#417; the C# service SDK's name for it is `InvalidResponseWhileProxying`,
//! Azure/azure-iot-sdk-c#6). The device's connection stays up.

use casement_iothub::error::ErrorCode;
use casement_iothub::rest::{self, MAX_METHOD_PAYLOAD_BYTES};
use serde_json::Value;

use crate::error::ApiError;

/// The payload of a device's method answer, or the error Azure gives the caller instead.
pub(crate) fn payload(device_id: &str, body: &[u8]) -> Result<Value, ApiError> {
    if body.len() > MAX_METHOD_PAYLOAD_BYTES {
        return Err(ApiError::new(
            ErrorCode::InvalidResponseWhileProxying,
            format!(
                "device {device_id:?} answered the direct method with {} bytes; a method response \
                 is at most {MAX_METHOD_PAYLOAD_BYTES} bytes (128 KB) of JSON — the device must \
                 answer with less",
                body.len()
            ),
        ));
    }
    rest::payload_from_bytes(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidResponseWhileProxying,
            format!(
                "device {device_id:?} answered the direct method with a payload that is not a \
                 valid document of type application/json ({e}); the device must answer with JSON \
                 (a quoted string such as \"done\" is JSON) or an empty body"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_or_empty_within_128_kb_passes() {
        assert_eq!(payload("d", b"").unwrap(), Value::Null);
        assert_eq!(payload("d", b"\"ok\"").unwrap(), Value::from("ok"));
        let big = format!("\"{}\"", "a".repeat(MAX_METHOD_PAYLOAD_BYTES - 2));
        assert!(payload("d", big.as_bytes()).is_ok());
    }

    #[test]
    fn anything_else_is_502101() {
        let e = payload("d", b"Reboot started").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidResponseWhileProxying);
        let big = format!("\"{}\"", "a".repeat(MAX_METHOD_PAYLOAD_BYTES - 1));
        let e = payload("d", big.as_bytes()).unwrap_err();
        assert_eq!(e.code.numeric(), 502101);
        assert!(e.message.contains("131073 bytes"), "{}", e.message);
    }
}
