//! The `reboot` direct method's contract, written once for the scheduler (which sends requests
//! and reads answers) and the agent (which parses requests and builds answers).
//!
//! Request payloads ([`RebootPayload::parse`]):
//! ```json
//! {"policy": "canary", "revision": "0a1b2c3d", "occurrence": "2026-11-29T01:00:00.000Z"}
//! null                                            (or {}: the window open now)
//! {"force": true, "reason": "CVE-2026-1234 hotfix"}   (the audited emergency override)
//! ```
//! Answers ([`RebootAnswer`]), with the method status: 200 `{"accepted": true, …}` (rebooting),
//! 200 `{"accepted": true, "alreadyDone": true, "occurrence": …}`, 409 `{"accepted": false,
//! "reason": "outside-window", "message": …, "window": {…}}` ([`RefusalReason`]), 400 for a
//! malformed payload, 500 when the agent could not persist the reboot before running it.

use casement_iothub::time::{serde_timestamp, serde_timestamp_opt};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use casement_iothub::twin::type_name as json_type;

use super::{ReportedWindow, parse_section};

/// Payloads larger than this are refused (the scheduler's payload is a few hundred bytes).
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024;
/// The longest `reason` a forced reboot may carry (it is written into the twin).
pub const MAX_REASON_CHARS: usize = 512;

/// The scheduler's payload of the `reboot` direct method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RebootRequest {
    /// The policy the reboot is for.
    pub policy: String,
    /// Its revision; the device refuses a request for a revision it has not applied.
    pub revision: String,
    /// The window occurrence (its `opensAt`); a device reboots at most once per occurrence.
    #[serde(with = "serde_timestamp")]
    pub occurrence: DateTime<Utc>,
}

/// Any payload the `reboot` method accepts, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootPayload {
    /// `null`, empty or `{}`: reboot in the window open now, under the applied policy.
    CurrentWindow,
    /// `{"policy","revision","occurrence"}` from the scheduler.
    Scheduled(RebootRequest),
    /// `{"force":true,"reason":…}`: reboot now, window or not; audited in the twin.
    Forced {
        /// Why (trimmed, non-empty, at most [`MAX_REASON_CHARS`] characters).
        reason: String,
    },
}

impl RebootPayload {
    /// Parses a method payload; the error says what is wrong and what would be right (the
    /// agent answers it with 400).
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "payload is {} bytes; at most {MAX_PAYLOAD_BYTES} are accepted",
                payload.len()
            ));
        }
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::CurrentWindow);
        }
        let value: Value = serde_json::from_slice(payload)
            .map_err(|err| format!("payload is not valid JSON: {err}"))?;
        let object = match value {
            Value::Null => return Ok(Self::CurrentWindow),
            Value::Object(object) => object,
            other => {
                return Err(format!(
                    "payload must be a JSON object or null, not {}",
                    json_type(&other)
                ));
            }
        };
        if object.is_empty() {
            return Ok(Self::CurrentWindow);
        }
        match object.get("force") {
            None | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => {
                let reason = match object.get("reason") {
                    Some(Value::String(reason)) => reason,
                    None => "",
                    Some(other) => {
                        return Err(format!(
                            "\"reason\" must be a string, not {}",
                            json_type(other)
                        ));
                    }
                };
                return Self::forced(reason);
            }
            Some(other) => {
                return Err(format!(
                    "\"force\" must be true or false, not {}",
                    json_type(other)
                ));
            }
        }
        let request: RebootRequest = parse_section("payload", &Value::Object(object))
            .map_err(|err| {
                format!(
                    "{err}: send {{\"policy\",\"revision\",\"occurrence\"}}, null for the current window, \
                     or {{\"force\":true,\"reason\":\"…\"}}"
                )
            })?;
        Ok(Self::Scheduled(request))
    }

    /// A forced reboot, checking the reason as the agent does.
    pub fn forced(reason: &str) -> Result<Self, String> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(
                "a forced reboot needs a non-empty \"reason\" (it is audited in the twin)"
                    .to_owned(),
            );
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(format!(
                "\"reason\" is longer than {MAX_REASON_CHARS} characters"
            ));
        }
        Ok(Self::Forced {
            reason: reason.to_owned(),
        })
    }

    /// The payload as sent.
    pub fn to_json(&self) -> Value {
        match self {
            RebootPayload::CurrentWindow => Value::Null,
            RebootPayload::Scheduled(request) => {
                serde_json::to_value(request).unwrap_or(Value::Null)
            }
            RebootPayload::Forced { reason } => {
                serde_json::json!({ "force": true, "reason": reason })
            }
        }
    }
}

/// Why the agent refused a reboot, machine-readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalReason {
    /// No window is open, or the open one is not the requested occurrence (409).
    OutsideWindow,
    /// The window closes before `expectedDurationSeconds` would elapse (409).
    InsufficientTime,
    /// The request names another policy or revision than the one applied (409).
    RevisionMismatch,
    /// No policy is applied (409).
    NoPolicy,
    /// Another reboot is already under way (409).
    RebootInProgress,
    /// The payload is not one the method accepts (400).
    MalformedPayload,
    /// The agent could not persist the reboot before running it (500).
    StateWriteFailed,
    /// A reason this version does not know (a newer agent).
    #[serde(other)]
    Unknown,
}

impl RefusalReason {
    /// The reason as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::OutsideWindow => "outside-window",
            RefusalReason::InsufficientTime => "insufficient-time",
            RefusalReason::RevisionMismatch => "revision-mismatch",
            RefusalReason::NoPolicy => "no-policy",
            RefusalReason::RebootInProgress => "reboot-in-progress",
            RefusalReason::MalformedPayload => "malformed-payload",
            RefusalReason::StateWriteFailed => "state-write-failed",
            RefusalReason::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The agent's answer to the `reboot` method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RebootAnswer {
    /// Whether the device is rebooting (or already rebooted for the occurrence).
    pub accepted: bool,
    /// The device had already rebooted (or is rebooting) for this occurrence: nothing was done.
    #[serde(default, skip_serializing_if = "is_false")]
    pub already_done: bool,
    /// An accepted forced reboot.
    #[serde(default, skip_serializing_if = "is_false")]
    pub forced: bool,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RefusalReason>,
    /// For people: what was wrong and what would be right, or a forced reboot's audit reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The policy the device applies (accepted, or a revision mismatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Its revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The occurrence rebooted for.
    #[serde(
        default,
        with = "serde_timestamp_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub occurrence: Option<DateTime<Utc>>,
    /// The device's current or next window, as it sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<ReportedWindow>,
}

impl RebootAnswer {
    fn empty(accepted: bool) -> Self {
        Self {
            accepted,
            already_done: false,
            forced: false,
            reason: None,
            message: None,
            policy: None,
            revision: None,
            occurrence: None,
            window: None,
        }
    }

    /// 200: rebooting now.
    pub fn accepted(
        policy: Option<String>,
        revision: Option<String>,
        occurrence: Option<DateTime<Utc>>,
        window: Option<ReportedWindow>,
    ) -> Self {
        Self {
            policy,
            revision,
            occurrence,
            window,
            ..Self::empty(true)
        }
    }

    /// 200: already rebooted (or rebooting) for `occurrence`.
    pub fn already_done(occurrence: DateTime<Utc>) -> Self {
        Self {
            already_done: true,
            occurrence: Some(occurrence),
            ..Self::empty(true)
        }
    }

    /// Refused, with the reason, what was wrong, and the window as the device sees it.
    pub fn refused(
        reason: RefusalReason,
        message: impl Into<String>,
        window: Option<ReportedWindow>,
    ) -> Self {
        Self {
            reason: Some(reason),
            message: Some(message.into()),
            window,
            ..Self::empty(false)
        }
    }

    /// The method status that goes with the answer: 200 accepted, 400 malformed, 500 not
    /// persisted, 409 any other refusal.
    pub fn status(&self) -> u16 {
        match (self.accepted, self.reason) {
            (true, _) => 200,
            (false, Some(RefusalReason::MalformedPayload)) => 400,
            (false, Some(RefusalReason::StateWriteFailed)) => 500,
            (false, _) => 409,
        }
    }

    /// The answer as JSON.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Reads an answer; the error says what was wrong with it.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        parse_section("answer", value).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn t(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, h, 0, 0).unwrap()
    }

    #[test]
    fn reboot_request_json() {
        let request = RebootRequest {
            policy: "canary".into(),
            revision: "0a1b2c3d".into(),
            occurrence: t(1),
        };
        let value = serde_json::to_value(&request).unwrap();
        assert_eq!(
            value,
            json!({ "policy": "canary", "revision": "0a1b2c3d", "occurrence": "2026-11-29T01:00:00.000Z" })
        );
        assert_eq!(
            serde_json::from_value::<RebootRequest>(value).unwrap(),
            request
        );
    }

    #[test]
    fn payloads_parse_and_render_round_trip() {
        for text in ["", " ", "null", "{}"] {
            assert_eq!(
                RebootPayload::parse(text.as_bytes()),
                Ok(RebootPayload::CurrentWindow)
            );
        }
        let scheduled = RebootPayload::parse(
            br#"{"policy":"p","revision":"r","occurrence":"2026-11-29T01:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(
            scheduled,
            RebootPayload::Scheduled(RebootRequest {
                policy: "p".into(),
                revision: "r".into(),
                occurrence: t(1)
            })
        );
        let forced = RebootPayload::forced("  hotfix ").unwrap();
        assert_eq!(forced.to_json(), json!({"force": true, "reason": "hotfix"}));
        for payload in [scheduled, forced, RebootPayload::CurrentWindow] {
            let bytes = serde_json::to_vec(&payload.to_json()).unwrap();
            assert_eq!(RebootPayload::parse(&bytes), Ok(payload));
        }
    }

    #[test]
    fn payloads_that_mean_the_current_window() {
        for payload in [&b""[..], b"  ", b"null", b" null\n", b"{}"] {
            assert_eq!(
                RebootPayload::parse(payload),
                Ok(RebootPayload::CurrentWindow)
            );
        }
    }

    #[test]
    fn scheduled_and_forced_payloads_parse() {
        assert_eq!(
            RebootPayload::parse(
                br#"{"policy":"weekly","revision":"rev1","occurrence":"2026-11-29T01:00:00.000Z"}"#
            ),
            Ok(RebootPayload::Scheduled(RebootRequest {
                policy: "weekly".into(),
                revision: "rev1".into(),
                occurrence: t(1)
            }))
        );
        assert_eq!(
            RebootPayload::parse(br#"{"force":true,"reason":"  CVE hotfix "}"#),
            Ok(RebootPayload::Forced {
                reason: "CVE hotfix".into()
            })
        );
        // force:false is an ordinary request; unknown fields are ignored.
        assert!(matches!(
            RebootPayload::parse(
                br#"{"force":false,"policy":"p","revision":"r","occurrence":"2026-11-29T01:00:00Z","by":"x"}"#
            ),
            Ok(RebootPayload::Scheduled(_))
        ));
    }

    #[test]
    fn malformed_payloads_are_explained() {
        let cases: &[(&[u8], &str)] = &[
            (b"{", "not valid JSON"),
            (b"\"reboot please\"", "not a string"),
            (b"[1]", "not an array"),
            (b"42", "not a number"),
            (br#"{"policy":"p"}"#, "missing field `revision`"),
            (
                br#"{"policy":"p","revision":"r","occurrence":"yesterday"}"#,
                "payload.occurrence: invalid timestamp",
            ),
            (
                br#"{"policy":1,"revision":"r","occurrence":"2026-11-29T01:00:00Z"}"#,
                "payload.policy: invalid type: integer `1`, expected a string",
            ),
            (br#"{"force":true}"#, "needs a non-empty \"reason\""),
            (
                br#"{"force":true,"reason":"  "}"#,
                "needs a non-empty \"reason\"",
            ),
            (
                br#"{"force":true,"reason":7}"#,
                "\"reason\" must be a string",
            ),
            (
                br#"{"force":"yes","reason":"x"}"#,
                "\"force\" must be true or false",
            ),
        ];
        for (payload, expected) in cases {
            let err = RebootPayload::parse(payload).unwrap_err();
            assert!(
                err.contains(expected),
                "{}: {err}",
                String::from_utf8_lossy(payload)
            );
        }
        let long = format!(
            r#"{{"force":true,"reason":"{}"}}"#,
            "x".repeat(MAX_REASON_CHARS + 1)
        );
        assert!(
            RebootPayload::parse(long.as_bytes())
                .unwrap_err()
                .contains("longer than")
        );
        let huge = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert!(RebootPayload::parse(&huge).unwrap_err().contains("at most"));
    }

    #[test]
    fn answers_have_one_shape_both_ways() {
        let window = ReportedWindow {
            open: false,
            opens_at: t(1),
            closes_at: t(3),
            due: false,
        };
        let refused = RebootAnswer::refused(
            RefusalReason::OutsideWindow,
            "no maintenance window is open",
            Some(window),
        );
        assert_eq!(refused.status(), 409);
        let value = refused.to_json();
        assert_eq!(
            value,
            json!({"accepted": false, "reason": "outside-window",
                   "message": "no maintenance window is open",
                   "window": {"open": false, "opensAt": "2026-11-29T01:00:00.000Z",
                              "closesAt": "2026-11-29T03:00:00.000Z", "due": false}})
        );
        assert_eq!(RebootAnswer::from_json(&value), Ok(refused));
        let done = RebootAnswer::already_done(t(1));
        assert_eq!(
            done.to_json(),
            json!({"accepted": true, "alreadyDone": true, "occurrence": "2026-11-29T01:00:00.000Z"})
        );
        assert_eq!(done.status(), 200);
        // A reason from a newer agent is read, not an error.
        let newer =
            RebootAnswer::from_json(&json!({"accepted": false, "reason": "low-battery"})).unwrap();
        assert_eq!(newer.reason, Some(RefusalReason::Unknown));
        assert_eq!(
            RebootAnswer::refused(RefusalReason::MalformedPayload, "x", None).status(),
            400
        );
        assert_eq!(
            RebootAnswer::refused(RefusalReason::StateWriteFailed, "x", None).status(),
            500
        );
        let err = RebootAnswer::from_json(&json!({"reason": "x"})).unwrap_err();
        assert!(err.contains("accepted"), "{err}");
    }
}
