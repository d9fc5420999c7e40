//! Percent-encoding, written once for URL path segments, SAS resource URIs and MQTT topic
//! segments and property bags: everything but the RFC 3986 unreserved characters
//! `A-Z a-z 0-9 - _ . ~` is escaped, with uppercase hex — `encodeURIComponent` as the Node SDK
//! uses it, plus `!'()*` (Python's `quote(safe="")`).
//!
//! ```
//! use casement_iothub::encoding::{decode_component, encode_component};
//! assert_eq!(encode_component("hub/devices/d 1"), "hub%2Fdevices%2Fd%201");
//! assert_eq!(decode_component("d%201").as_deref(), Some("d 1"));
//! ```

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// What is escaped: all but `A-Z a-z 0-9 - _ . ~`.
pub const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one component.
pub fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Decodes one component; `None` when the bytes are not UTF-8.
pub fn decode_component(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}
