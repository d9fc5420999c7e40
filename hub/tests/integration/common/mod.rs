//! Shared helpers for the hub's integration tests: a hub on 127.0.0.1:0, SAS tokens, a REST
//! client, and a small MQTT device client built on rumqttc's `mqttbytes::v4` codec (so tests
//! control every packet, including broken ones).

use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::BytesMut;
use casement_hub::{Hub, HubConfig, RunningHub};
use casement_iothub::connection_string::{DeviceConnectionString, ServiceConnectionString};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe,
    SubscribeFilter,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// Installs the ring crypto provider once per test binary.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("CASEMENT_TEST_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A hub with the test configuration (in memory, every listener on 127.0.0.1:0).
pub async fn start() -> RunningHub {
    start_with(HubConfig::for_tests()).await
}

/// A hub with `config`.
pub async fn start_with(config: HubConfig) -> RunningHub {
    init();
    Hub::start(config).await.expect("hub starts")
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A service token for `policy` on `hub`.
pub fn policy_token(hub: &RunningHub, policy: &str) -> String {
    let cs: ServiceConnectionString = hub
        .policy_connection_string(policy)
        .expect("policy")
        .parse()
        .expect("connection string");
    cs.sas_token(now() + 3600).expect("sign")
}

/// A device token from a device connection string.
pub fn device_token(connection_string: &str, expiry: u64) -> String {
    let cs: DeviceConnectionString = connection_string.parse().expect("device cs");
    cs.password(expiry).expect("sign").expect("key")
}

/// The device key of a device connection string.
pub fn device_key(connection_string: &str) -> String {
    connection_string
        .split(';')
        .find_map(|kv| kv.strip_prefix("SharedAccessKey="))
        .expect("key")
        .to_owned()
}

/// A REST client for the hub's plain HTTP listener.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub token: String,
}

/// A response: status, headers, body as JSON (or `Value::Null`), raw body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an IoT Hub error answer and returns it for further checks.
    pub fn expect_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("iothub-errorcode"), Some(code), "{self:?}");
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{self:?}"
        );
        let message = self.json["Message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("ErrorCode:{code};")),
            "{self:?}"
        );
        self
    }
}

impl Api {
    pub fn new(hub: &RunningHub) -> Self {
        Self::with_token(hub, policy_token(hub, "iothubowner"))
    }

    pub fn with_token(hub: &RunningHub, token: String) -> Self {
        init();
        Api {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            base: hub.http_url().expect("http listener"),
            token,
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{sep}api-version=2021-04-12", self.base);
        let mut request = self
            .client
            .request(method, url)
            .header("Authorization", &self.token);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json; charset=utf-8")
                .body(serde_json::to_vec(body).expect("json"));
        }
        reply(request.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(reqwest::Method::GET, path, None, &[]).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.call(reqwest::Method::PUT, path, Some(body), &[]).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.call(reqwest::Method::PATCH, path, Some(body), &[])
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call(reqwest::Method::POST, path, Some(body), &[])
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call(reqwest::Method::DELETE, path, None, &[]).await
    }

    /// `POST /devices/query` with optional page size and continuation.
    pub async fn query(&self, sql: &str, page: Option<usize>, continuation: Option<&str>) -> Reply {
        let page = page.map(|p| p.to_string());
        let mut headers = Vec::new();
        if let Some(p) = &page {
            headers.push(("x-ms-max-item-count", p.as_str()));
        }
        if let Some(c) = continuation {
            headers.push(("x-ms-continuation", c));
        }
        self.call(
            reqwest::Method::POST,
            "/devices/query",
            Some(&serde_json::json!({ "query": sql })),
            &headers,
        )
        .await
    }

    /// Invokes a method.
    pub async fn invoke(&self, device: &str, body: &Value) -> Reply {
        self.post(&format!("/twins/{device}/methods"), body).await
    }

    /// Invokes a method on a task of its own, so the test can play the device meanwhile.
    pub fn invoke_in_background(
        &self,
        device: &str,
        body: Value,
    ) -> tokio::task::JoinHandle<Reply> {
        let api = self.clone();
        let device = device.to_owned();
        tokio::spawn(async move { api.invoke(&device, &body).await })
    }
}

pub async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        json,
        text,
    }
}

/// A raw MQTT client speaking `mqttbytes::v4`.
pub struct Mqtt<S> {
    io: S,
    buf: BytesMut,
    next_pkid: u16,
}

pub type PlainMqtt = Mqtt<TcpStream>;

impl Mqtt<TcpStream> {
    /// Opens a TCP connection (no CONNECT yet).
    pub async fn open(addr: SocketAddr) -> Self {
        Mqtt::over(TcpStream::connect(addr).await.expect("tcp connect"))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Mqtt<S> {
    pub fn over(io: S) -> Self {
        Mqtt {
            io,
            buf: BytesMut::new(),
            next_pkid: 0,
        }
    }

    pub async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, 16 * 1024 * 1024).expect("encode");
        self.io.write_all(&out).await.expect("write");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await
    }

    /// The next packet; `None` when the hub closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.recv_forever())
            .await
            .expect("a packet (or close) within the wait")
    }

    /// The next packet without a time limit (for tests that pause time).
    pub async fn recv_forever(&mut self) -> Option<Packet> {
        loop {
            match Packet::read(&mut self.buf, 16 * 1024 * 1024) {
                Ok(p) => return Some(p),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                    match self.io.read_buf(&mut self.buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
                Err(e) => panic!("hub sent a malformed packet: {e}"),
            }
        }
    }

    /// Asserts that the hub closes the connection (after possibly sending some packets).
    pub async fn expect_closed(&mut self) {
        while let Some(p) = self.recv().await {
            if let Packet::Publish(_) | Packet::PubAck(_) = p {
                continue;
            }
            panic!("expected the hub to close the connection, got {p:?}");
        }
    }

    /// Sends CONNECT and returns the CONNACK.
    pub async fn connect_raw(
        &mut self,
        client_id: &str,
        username: &str,
        password: &str,
        clean_session: bool,
        keep_alive: u16,
    ) -> Option<ConnAck> {
        let mut connect = Connect::new(client_id);
        connect.protocol = Protocol::V4;
        connect.keep_alive = keep_alive;
        connect.clean_session = clean_session;
        connect.set_login(username, password);
        self.send(Packet::Connect(connect)).await;
        match self.recv().await {
            Some(Packet::ConnAck(ack)) => Some(ack),
            Some(other) => panic!("expected CONNACK, got {other:?}"),
            None => None,
        }
    }

    pub fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        self.next_pkid
    }

    pub async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> SubAck {
        let pkid = self.pkid();
        let subscribe = Subscribe {
            pkid,
            filters: filters
                .iter()
                .map(|(f, q)| SubscribeFilter::new((*f).to_owned(), *q))
                .collect(),
        };
        self.send(Packet::Subscribe(subscribe)).await;
        loop {
            match self.recv().await {
                Some(Packet::SubAck(ack)) => {
                    assert_eq!(ack.pkid, pkid);
                    return ack;
                }
                Some(Packet::Publish(_)) => continue,
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    /// Publishes; for QoS 1 waits for the PUBACK (skipping publishes that arrive meanwhile,
    /// which are returned).
    pub async fn publish(&mut self, topic: &str, qos: QoS, payload: &[u8]) -> Vec<Publish> {
        let mut publish = Publish::new(topic, qos, payload.to_vec());
        let mut others = Vec::new();
        if qos != QoS::AtMostOnce {
            publish.pkid = self.pkid();
        }
        let pkid = publish.pkid;
        self.send(Packet::Publish(publish)).await;
        if qos == QoS::AtLeastOnce {
            loop {
                match self.recv().await {
                    Some(Packet::PubAck(ack)) if ack.pkid == pkid => break,
                    Some(Packet::Publish(p)) => others.push(p),
                    other => panic!("expected PUBACK, got {other:?}"),
                }
            }
        }
        others
    }

    /// The next PUBLISH from the hub (acknowledging QoS 1).
    pub async fn next_publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(p)) => {
                    if p.qos == QoS::AtLeastOnce {
                        self.send(Packet::PubAck(PubAck::new(p.pkid))).await;
                    }
                    return p;
                }
                Some(Packet::PubAck(_)) => continue,
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }
}

/// A device connected to the hub's plain MQTT listener.
pub struct Device {
    pub mqtt: PlainMqtt,
    pub session_present: bool,
}

/// The IoT Hub username for `device_id`.
pub fn username(host: &str, device_id: &str) -> String {
    format!("{host}/{device_id}/?api-version=2021-04-12&DeviceClientType=casement-tests")
}

impl Device {
    /// Creates the device (unless it exists) and connects it with CleanSession=0.
    pub async fn create_and_connect(hub: &RunningHub, id: &str) -> Device {
        let cs = match hub.device_connection_string(id) {
            Some(cs) => cs,
            None => hub
                .create_device(id, Value::Null)
                .await
                .expect("create device"),
        };
        Device::connect(hub, id, &cs, false).await
    }

    /// Connects with the device connection string; panics unless accepted.
    pub async fn connect(hub: &RunningHub, id: &str, cs: &str, clean_session: bool) -> Device {
        let mut mqtt = Mqtt::open(hub.mqtt_addr().expect("mqtt")).await;
        let ack = mqtt
            .connect_raw(
                id,
                &username("localhost", id),
                &device_token(cs, now() + 3600),
                clean_session,
                60,
            )
            .await
            .expect("CONNACK");
        assert_eq!(ack.code, ConnectReturnCode::Success, "device {id} connects");
        Device {
            mqtt,
            session_present: ack.session_present,
        }
    }

    /// Sends a twin GET and returns (status, body).
    pub async fn twin_get(&mut self, rid: &str) -> (String, Value) {
        self.mqtt
            .publish(
                &format!("$iothub/twin/GET/?$rid={rid}"),
                QoS::AtLeastOnce,
                b" ",
            )
            .await;
        let p = self.mqtt.next_publish().await;
        twin_response(&p, rid)
    }

    /// Sends a reported patch and returns (topic, body).
    pub async fn report(&mut self, rid: &str, patch: &Value) -> (String, Value) {
        self.mqtt
            .publish(
                &format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
                QoS::AtLeastOnce,
                &serde_json::to_vec(patch).expect("json"),
            )
            .await;
        let p = self.mqtt.next_publish().await;
        twin_response(&p, rid)
    }
}

fn twin_response(p: &Publish, rid: &str) -> (String, Value) {
    assert!(p.topic.starts_with("$iothub/twin/res/"), "{}", p.topic);
    assert!(p.topic.contains(&format!("$rid={rid}")), "{}", p.topic);
    let body = if p.payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&p.payload).expect("json body")
    };
    (p.topic.clone(), body)
}

/// A rustls client config trusting only `ca_pem`.
pub fn client_tls(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
