//! The client against a scripted HTTP server on 127.0.0.1:0: the answers a real hub gives only
//! under load (429 with Retry-After, 503) are produced on demand here. The end-to-end behaviour
//! against the real local hub is in `tests/`.

use super::*;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use casement_iothub::rest::{MethodRequest, TwinPatch};
use tokio::time::Instant;

use crate::quota::Limiter;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use casement_iothub::clock::ManualClock;
use chrono::TimeZone;
use serde_json::json;

/// One recorded request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// A scripted answer: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);

#[derive(Clone, Default)]
struct Script {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn handle(
    State(script): State<Script>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    script.seen.lock().unwrap().push(Seen {
        method,
        uri,
        headers,
        body,
    });
    let answer = script.answers.lock().unwrap().pop_front();
    let Some((status, extra, body)) = answer else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "script exhausted").into_response();
    };
    let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
    response.headers_mut().insert(
        "content-type",
        "application/json; charset=utf-8".parse().unwrap(),
    );
    for (k, v) in extra {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    response
}

const CS: &str = "HostName=hub.example.net;SharedAccessKeyName=iothubowner;SharedAccessKey=c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seQ==";

fn start() -> DateTime {
    chrono::Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}
type DateTime = chrono::DateTime<chrono::Utc>;

async fn serve(answers: Vec<Answer>) -> (Script, String) {
    let script = Script::default();
    script.answers.lock().unwrap().extend(answers);
    let app = Router::new().fallback(handle).with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (script, format!("http://{addr}"))
}

fn client(endpoint: &str, clock: ManualClock, config: ClientConfig) -> ServiceClient {
    let target = HubTarget::new(CS.parse().unwrap())
        .with_endpoint(endpoint)
        .unwrap();
    ServiceClient::new(target, config, Arc::new(clock)).unwrap()
}

fn fast_retries() -> ClientConfig {
    ClientConfig {
        retry: RetryPolicy {
            max_attempts: 4,
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
        },
        ..ClientConfig::default()
    }
}

fn ok(body: serde_json::Value) -> Answer {
    (200, vec![], body.to_string())
}

fn error(status: u16, name: &str, extra: Vec<(&'static str, String)>) -> Answer {
    let mut headers = extra;
    headers.push(("iothub-errorcode", name.to_owned()));
    (
        status,
        headers,
        json!({"Message": format!("ErrorCode:{name};scripted"), "ExceptionMessage": ""})
            .to_string(),
    )
}

fn twin(id: &str) -> serde_json::Value {
    json!({"deviceId": id, "etag": "AAAAAAAAAAE=", "version": 1,
           "properties": {"desired": {"$version": 1}, "reported": {"$version": 1}}})
}

#[tokio::test]
async fn queries_follow_continuations_to_the_last_page() {
    let (script, url) = serve(vec![
        (
            200,
            vec![("x-ms-continuation", "page-2".into())],
            json!([twin("a"), twin("b")]).to_string(),
        ),
        (
            200,
            vec![("x-ms-continuation", "page-3".into())],
            json!([twin("c")]).to_string(),
        ),
        ok(json!([twin("d")])),
    ])
    .await;
    let c = client(&url, ManualClock::new(start()), fast_retries());
    let items = c.query_all("SELECT * FROM devices").await.unwrap();
    let ids: Vec<_> = items
        .iter()
        .map(|i| i["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    let seen = script.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].uri.path(), "/devices/query");
    assert_eq!(seen[0].uri.query(), Some("api-version=2021-04-12"));
    assert!(seen[0].headers.get("x-ms-continuation").is_none());
    assert_eq!(seen[0].headers["x-ms-max-item-count"], "100");
    assert_eq!(seen[1].headers["x-ms-continuation"], "page-2");
    assert_eq!(seen[2].headers["x-ms-continuation"], "page-3");
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body, json!({"query": "SELECT * FROM devices"}));
}

#[tokio::test]
async fn a_hub_repeating_its_continuation_is_an_error_not_a_loop() {
    let page = (
        200,
        vec![("x-ms-continuation", "same".into())],
        json!([]).to_string(),
    );
    let (_, url) = serve(vec![page.clone(), page.clone(), page]).await;
    let c = client(&url, ManualClock::new(start()), fast_retries());
    let err = c.query_all("SELECT * FROM devices").await.unwrap_err();
    assert!(err.to_string().contains("continuation"), "{err}");
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_honouring_retry_after() {
    let (script, url) = serve(vec![
        error(
            429,
            "ThrottlingException",
            vec![("retry-after", "0".into())],
        ),
        error(503, "ServiceUnavailable", vec![]),
        error(500, "ServerError", vec![]),
        ok(twin("d1")),
    ])
    .await;
    let c = client(&url, ManualClock::new(start()), fast_retries());
    let t = c.twin("d1").await.unwrap();
    assert_eq!(t.device_id, "d1");
    assert_eq!(script.seen.lock().unwrap().len(), 4);
    assert_eq!(c.stats().retries.load(Ordering::Relaxed), 3);
    assert_eq!(c.stats().throttled.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn retries_stop_at_max_attempts_with_the_last_error() {
    let throttled = || error(429, "ThrottlingException", vec![]);
    let (script, url) = serve(vec![
        throttled(),
        throttled(),
        throttled(),
        throttled(),
        ok(twin("x")),
    ])
    .await;
    let c = client(&url, ManualClock::new(start()), fast_retries());
    let err = c.twin("d1").await.unwrap_err();
    assert!(err.is_throttled(), "{err}");
    assert_eq!(script.seen.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn other_client_errors_are_not_retried_and_keep_their_code() {
    let (script, url) = serve(vec![
        error(404, "DeviceNotOnline", vec![]),
        error(412, "PreconditionFailed", vec![]),
        error(404, "DeviceNotFound", vec![]),
        error(400, "ArgumentInvalid", vec![]),
    ])
    .await;
    let c = client(&url, ManualClock::new(start()), fast_retries());
    let req = MethodRequest::new("reboot", json!({}), 30);
    let e = c.invoke("d1", &req).await.unwrap_err();
    assert!(e.is_device_offline(), "{e}");
    let e = c
        .patch("d1", &TwinPatch::desired(json!({"a": 1})), Some("AAAA"))
        .await
        .unwrap_err();
    assert!(e.is_precondition_failed(), "{e}");
    let e = c.twin("d1").await.unwrap_err();
    assert!(e.is_device_not_found() && !e.is_device_offline(), "{e}");
    let e = c.query_all("SELECT").await.unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert_eq!(script.seen.lock().unwrap().len(), 4, "no retries");
}

#[tokio::test]
async fn patches_send_a_quoted_if_match_and_methods_their_body() {
    let (script, url) = serve(vec![
        ok(twin("d1")),
        ok(twin("d1")),
        ok(json!({"status": 200, "payload": {"accepted": true}})),
    ])
    .await;
    let c = client(&url, ManualClock::new(start()), fast_retries());
    c.patch(
        "d1",
        &TwinPatch::desired(json!({"m": null})),
        Some("AAAAAAAAAAE="),
    )
    .await
    .unwrap();
    c.patch("d 1/x", &TwinPatch::desired(json!({})), None)
        .await
        .unwrap();
    let req = MethodRequest::new("reboot", json!({"policy": "p"}), 45);
    let resp = c.invoke("d1", &req).await.unwrap();
    assert_eq!(resp.status, 200);
    let seen = script.seen.lock().unwrap().clone();
    assert_eq!(seen[0].method, Method::PATCH);
    assert_eq!(seen[0].uri.path(), "/twins/d1");
    assert_eq!(seen[0].headers["if-match"], "\"AAAAAAAAAAE=\"");
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body, json!({"properties": {"desired": {"m": null}}}));
    assert!(seen[1].headers.get("if-match").is_none());
    assert_eq!(seen[1].uri.path(), "/twins/d%201%2Fx");
    assert_eq!(seen[2].uri.path(), "/twins/d1/methods");
    let body: serde_json::Value = serde_json::from_slice(&seen[2].body).unwrap();
    assert_eq!(body["methodName"], "reboot");
    assert_eq!(body["responseTimeoutInSeconds"], 45);
    assert_eq!(body["payload"], json!({"policy": "p"}));
}

#[tokio::test]
async fn the_sas_token_is_reused_until_near_expiry() {
    let (script, url) = serve(vec![ok(twin("a")), ok(twin("a")), ok(twin("a"))]).await;
    let clock = ManualClock::new(start());
    let c = client(&url, clock.clone(), fast_retries());
    c.twin("a").await.unwrap();
    clock.advance(chrono::TimeDelta::minutes(44));
    c.twin("a").await.unwrap();
    // 3600 s lifetime, renewed 900 s before expiry: at 45 min a new token.
    clock.advance(chrono::TimeDelta::minutes(1));
    c.twin("a").await.unwrap();
    let seen = script.seen.lock().unwrap().clone();
    let auth: Vec<String> = seen
        .iter()
        .map(|s| s.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(auth[0], auth[1]);
    assert_ne!(auth[1], auth[2]);
    assert_eq!(c.stats().tokens_signed.load(Ordering::Relaxed), 2);
    let token = casement_iothub::sas::SasToken::parse(&auth[0]).unwrap();
    assert_eq!(token.to_string(), auth[0]);
    let expected_se = start().timestamp() + 3600;
    assert!(
        auth[0].contains(&format!("se={expected_se}")),
        "{}",
        auth[0]
    );
    assert!(auth[0].contains("skn=iothubowner"));
}

#[tokio::test]
async fn a_silent_hub_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accept and never answer.
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            if let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        }
    });
    let config = ClientConfig {
        request_timeout: Duration::from_millis(100),
        retry: RetryPolicy {
            max_attempts: 2,
            initial: Duration::from_millis(1),
            max: Duration::from_millis(1),
        },
        ..ClientConfig::default()
    };
    let c = client(&format!("http://{addr}"), ManualClock::new(start()), config);
    let err = c.twin("d1").await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    hold.abort();
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = client(
        &format!("http://{addr}"),
        ManualClock::new(start()),
        fast_retries(),
    );
    let err = c.twin("d1").await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    // Said once, with where and what to check; no repeated reqwest chain.
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("GET /twins/d1: cannot connect to {addr}: ")),
        "{text}"
    );
    assert!(text.contains("--endpoint"), "{text}");
    assert_eq!(text.matches("error sending request").count(), 0, "{text}");
}

#[tokio::test]
async fn a_connection_lost_after_the_request_may_have_been_carried_out_a_refused_one_not() {
    use tokio::io::AsyncReadExt as _;
    // Reads the whole request, then hangs up without an answer (a link cut mid-call).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen = Vec::new();
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if seen.len() >= head_end + 4 + length {
                        break;
                    }
                }
            }
            drop(socket);
        }
    });
    let c = client(
        &format!("http://{addr}"),
        ManualClock::new(start()),
        fast_retries(),
    );
    let request = MethodRequest::new("reboot", json!({}), 30);
    let err = c.invoke("d1", &request).await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    assert!(err.may_have_been_carried_out(), "{err}");
    server.abort();

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = closed.local_addr().unwrap();
    drop(closed);
    let c = client(
        &format!("http://{refused}"),
        ManualClock::new(start()),
        fast_retries(),
    );
    let err = c.invoke("d1", &request).await.unwrap_err();
    assert!(!err.may_have_been_carried_out(), "{err}");
    let timeout = ClientError::Timeout {
        op: "POST".into(),
        after: Duration::from_secs(1),
    };
    assert!(timeout.may_have_been_carried_out());
}

#[test]
fn retry_delays_grow_cap_and_respect_retry_after() {
    let p = RetryPolicy {
        max_attempts: 8,
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };
    assert_eq!(p.delay(1, None, 1.0), Duration::from_millis(100));
    assert_eq!(p.delay(2, None, 1.0), Duration::from_millis(200));
    assert_eq!(p.delay(3, None, 0.5), Duration::from_millis(200));
    assert_eq!(p.delay(10, None, 1.0), Duration::from_secs(2));
    assert_eq!(p.delay(1, None, 0.0), Duration::ZERO);
    // Retry-After is a floor, even above the cap.
    assert_eq!(
        p.delay(1, Some(Duration::from_secs(5)), 0.0),
        Duration::from_secs(5)
    );
}

#[tokio::test(start_paused = true)]
async fn quotas_space_operations_out() {
    // 20 queries per minute: the first goes at once, then one every 3 s.
    let limiter =
        Limiter::new(&Quota::unlimited().with(Operation::Queries, Rate::per_minute(20.0)));
    let start = Instant::now();
    for _ in 0..5 {
        limiter.acquire(Operation::Queries).await;
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_secs(12), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(13), "{elapsed:?}");
    // 50 updates per second: a burst of 50, then 50 more take a second.
    let limiter = Limiter::new(&Quota::tier(Tier::S1, 1));
    let start = Instant::now();
    for _ in 0..100 {
        limiter.acquire(Operation::TwinUpdates).await;
    }
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(990), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1100), "{elapsed:?}");
}

#[test]
fn tiers_have_the_documented_limits() {
    // The client keeps the table's rates (casement_iothub::quota), spread out: never a
    // minute's burst.
    let s1 = Quota::tier(Tier::S1, 1);
    assert_eq!(
        s1.rate(Operation::TwinUpdates),
        Some(Rate::per_second(50.0))
    );
    assert_eq!(
        s1.rate(Operation::Queries),
        Some(Rate::per_minute(20.0).spread())
    );
    assert_eq!(s1.rate(Operation::Queries).map(|r| r.burst), Some(1.0));
    let s1x4 = Quota::tier(Tier::S1, 4);
    assert_eq!(
        s1x4.rate(Operation::Queries),
        Some(Rate::per_minute(80.0).spread())
    );
    assert_eq!(
        s1x4.rate(Operation::TwinUpdates),
        Some(Rate::per_second(50.0))
    );
    let s3 = Quota::tier(Tier::S3, 2);
    assert_eq!(
        s3.rate(Operation::TwinUpdates),
        Some(Rate::per_second(500.0))
    );
    assert!(Quota::unlimited().is_unlimited());
    assert_eq!("s2".parse::<Tier>(), Ok(Tier::S2));
    assert!("S9".parse::<Tier>().is_err());
}

#[test]
fn the_local_hub_file_provides_the_connection_ca_and_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("connection.env");
    std::fs::write(
        &file,
        format!("# written by casement hub\nIOTHUB_CONNECTION_STRING='{CS}'\nCASEMENT_HUB_HTTP='http://127.0.0.1:8080'\n"),
    )
    .unwrap();
    let t = HubTarget::resolve(None, None, None, &file).unwrap();
    assert_eq!(t.connection.host_name, "hub.example.net");
    assert_eq!(t.endpoint, "http://127.0.0.1:8080");
    assert_eq!(t.source, file.display().to_string());
    // --hub wins over the file, and --endpoint over the default.
    let t = HubTarget::resolve(Some(CS), None, Some("http://127.0.0.1:9/"), &file).unwrap();
    assert_eq!(t.source, "--hub");
    assert_eq!(t.endpoint, "http://127.0.0.1:9");
    let t = HubTarget::resolve(Some(CS), None, None, &file).unwrap();
    assert_eq!(t.endpoint, "https://hub.example.net");
    // Nothing at all.
    let missing = dir.path().join("nope.env");
    assert!(matches!(
        HubTarget::resolve(None, None, None, &missing),
        Err(TargetError::NoHub)
    ));
    // Bad inputs are errors that say what is wrong.
    let e = HubTarget::resolve(Some("HostName=x"), None, None, &missing).unwrap_err();
    assert!(e.to_string().contains("connection string"), "{e}");
    let e = HubTarget::resolve(Some(CS), None, Some("ftp://x"), &missing).unwrap_err();
    assert!(matches!(e, TargetError::Endpoint { .. }));
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let e = HubTarget::resolve(Some(CS), Some(&not_pem), None, &missing).unwrap_err();
    assert!(matches!(e, TargetError::Ca { .. }), "{e}");
}

#[test]
fn etags_are_quoted_once() {
    use casement_iothub::rest::quote_etag;
    assert_eq!(quote_etag("AAAA"), "\"AAAA\"");
    assert_eq!(quote_etag("\"AAAA\""), "\"AAAA\"");
    assert_eq!(quote_etag("*"), "*");
}
