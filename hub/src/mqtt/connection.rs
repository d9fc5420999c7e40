//! One device connection: CONNECT and authentication, then a loop that reads packets, writes
//! what the broker queues for the device, and enforces keep-alive.
//!
//! Packets are framed with rumqttc's `mqttbytes::v4` codec from a buffer that never grows past
//! the packet size limit (a bigger remaining length closes the connection before its bytes are
//! read). Anything IoT Hub would not accept — a QoS 2 PUBLISH, a topic outside the documented
//! ones, a second CONNECT, malformed bytes — closes this connection only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use casement_iothub::error::{ErrorCode, twin_error_body};
use casement_iothub::sas::SasToken;
use casement_iothub::topic::{DeviceToHub, HubToDevice, MqttUsername};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{self, Protocol, QoS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::error::ApiError;
use crate::methods::MethodReply;
use crate::mqtt::broker::{Outbound, SubscribeRefusal};
use crate::shaping::DeviceThrottled;
use crate::state::Shared;
use crate::throttle::Operation;

/// IoT Hub's cap on the keep-alive timeout: 1767 s (reference §2).
const MAX_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(1767);
/// How long one write to a device may take before the device is given up on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a connection compares its token's expiry with the hub's clock. The clock is
/// injected and may be moved by hand, so the check polls rather than sleeping until expiry.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Outgoing packets are bounded by the queue, not by size; twins are at most ~100 KB.
const MAX_OUTGOING_PACKET: usize = 4 * 1024 * 1024;

/// Why a connection ended (for the log).
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed MQTT packet: {0}")]
    Malformed(mqttbytes::Error),
    #[error("protocol violation: {0}")]
    Violation(String),
    #[error("keep-alive expired")]
    KeepAlive,
    #[error("timed out")]
    Timeout,
    /// Shaping queue full: IoT Hub closes the connection (429002) rather than answer 429.
    #[error("over the {0} quota with the shaping queue full (IoT Hub 429002: connection closed)")]
    Throttled(Operation),
}

/// Framed packet reading over a bounded buffer.
struct Reader<R> {
    io: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// The next packet, or `None` at a clean end of stream. Cancel-safe: bytes read so far stay
    /// in the buffer.
    async fn next(&mut self) -> Result<Option<Packet>, Closed> {
        loop {
            match Packet::read(&mut self.buf, self.max) {
                Ok(packet) => return check_strings(packet).map(Some),
                Err(mqttbytes::Error::InsufficientBytes(n)) => {
                    self.buf.reserve(n.min(self.max));
                    if self.io.read_buf(&mut self.buf).await? == 0 {
                        return if self.buf.is_empty() {
                            Ok(None)
                        } else {
                            Err(Closed::Violation("connection closed mid-packet".into()))
                        };
                    }
                }
                Err(e) => return Err(Closed::Malformed(e)),
            }
        }
    }
}

/// Refuses a packet whose strings hold U+0000: MQTT 3.1.1 §1.5.3 forbids it in every UTF-8
/// string and §4.7.3 in topic names and filters; the connection is closed, as for any other
/// malformed packet (a NUL-terminated C string on the other side would see a different topic).
fn check_strings(packet: Packet) -> Result<Packet, Closed> {
    let nul = match &packet {
        Packet::Publish(p) => p.topic.contains('\0').then_some("topic name"),
        Packet::Subscribe(s) => s
            .filters
            .iter()
            .any(|f| f.path.contains('\0'))
            .then_some("topic filter"),
        Packet::Unsubscribe(u) => u
            .topics
            .iter()
            .any(|t| t.contains('\0'))
            .then_some("topic filter"),
        Packet::Connect(c) => {
            // The password is binary data in MQTT, not a string; a NUL there is just a bad token.
            let login = c.login.as_ref().is_some_and(|l| l.username.contains('\0'));
            (c.client_id.contains('\0') || login).then_some("CONNECT string")
        }
        _ => None,
    };
    match nul {
        Some(what) => Err(Closed::Violation(format!(
            "{what} contains U+0000, which MQTT 3.1.1 forbids (§1.5.3, §4.7.3)"
        ))),
        None => Ok(packet),
    }
}

struct Writer<W> {
    io: W,
    buf: BytesMut,
    next_pkid: u16,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    async fn send(&mut self, packet: Packet) -> Result<(), Closed> {
        self.buf.clear();
        packet
            .write(&mut self.buf, MAX_OUTGOING_PACKET)
            .map_err(|e| Closed::Violation(format!("cannot encode a packet: {e}")))?;
        let write = async {
            self.io.write_all(&self.buf).await?;
            self.io.flush().await
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| Closed::Timeout)??;
        Ok(())
    }

    async fn publish(&mut self, out: Outbound) -> Result<(), Closed> {
        let mut publish = Publish::from_bytes(out.topic, out.qos, out.payload);
        if out.qos != QoS::AtMostOnce {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            publish.pkid = self.next_pkid;
        }
        self.send(Packet::Publish(publish)).await
    }
}

/// Serves one MQTT connection until it closes, the device connects elsewhere, or the hub
/// shuts down.
pub(crate) async fn serve<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (read, write) = tokio::io::split(stream);
    let mut reader = Reader {
        io: read,
        buf: BytesMut::with_capacity(512),
        max: shared.limits.max_packet_size,
    };
    let mut writer = Writer {
        io: write,
        buf: BytesMut::with_capacity(256),
        next_pkid: 0,
    };
    let first = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        first = tokio::time::timeout(shared.limits.connect_timeout, reader.next()) => first,
    };
    let connect = match first {
        Ok(Ok(Some(Packet::Connect(connect)))) => connect,
        Ok(Ok(Some(other))) => {
            tracing::debug!(%peer, packet = ?packet_kind(&other), "first packet is not CONNECT; closing");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "bad CONNECT; closing");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time; closing");
            return;
        }
    };
    let (device_id, token_expires_after) = match authenticate(&shared, &connect) {
        Ok(accepted) => accepted,
        Err(code) => {
            tracing::info!(%peer, client_id = connect.client_id, ?code, "CONNECT refused");
            let _ = writer
                .send(Packet::ConnAck(ConnAck::new(code, false)))
                .await;
            return;
        }
    };

    let (tx, rx) = mpsc::channel(shared.limits.device_queue);
    let cancel = shared.shutdown.child_token();
    let attached = shared
        .broker
        .attach(&device_id, connect.clean_session, tx, cancel.clone());
    shared.registry.set_connected(&device_id, true);
    tracing::info!(%peer, device = device_id, clean_session = connect.clean_session, "device connected");

    let mut conn = Connection {
        shared: shared.clone(),
        device_id: device_id.clone(),
        conn_id: attached.conn_id,
        reader,
        writer,
        rx,
        cancel,
        keep_alive: keep_alive_timeout(connect.keep_alive),
        token_expires_after,
    };
    let result = match conn
        .writer
        .send(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            attached.session_present,
        )))
        .await
    {
        Ok(()) => conn.run().await,
        Err(e) => Err(e),
    };
    match &result {
        Ok(why) => tracing::info!(%peer, device = device_id, "device disconnected: {why}"),
        Err(e) => tracing::info!(%peer, device = device_id, "device connection closed: {e}"),
    }
    shared.faults.forget(attached.conn_id);
    if shared.broker.detach(&device_id, attached.conn_id) {
        shared.registry.set_connected(&device_id, false);
    }
    let _ = conn.writer.io.shutdown().await;
}

/// IoT Hub's keep-alive timeout: 1.5 × the CONNECT keep-alive, never more than 1,767 s — so
/// a keep-alive of 0 (MQTT's "no keep-alive") gets the cap too, and a device that vanished
/// without a FIN is always noticed in the end.
fn keep_alive_timeout(keep_alive_secs: u16) -> Option<Duration> {
    if keep_alive_secs == 0 {
        return Some(MAX_KEEP_ALIVE_TIMEOUT);
    }
    Some((Duration::from_secs(u64::from(keep_alive_secs)) * 3 / 2).min(MAX_KEEP_ALIVE_TIMEOUT))
}

/// Checks a CONNECT: protocol, username form, hub name, SAS token, device state, quota.
/// Returns the device and the unix second after which its token (plus the allowed skew) has
/// expired.
fn authenticate(shared: &Shared, connect: &Connect) -> Result<(String, u64), ConnectReturnCode> {
    if connect.protocol != Protocol::V4 {
        return Err(ConnectReturnCode::RefusedProtocolVersion);
    }
    let refuse = |why: String| {
        tracing::info!(
            client_id = connect.client_id,
            "CONNECT not authorized: {why}"
        );
        ConnectReturnCode::NotAuthorized
    };
    let login = connect
        .login
        .as_ref()
        .ok_or_else(|| refuse("no username and password".into()))?;
    let username = MqttUsername::parse(&login.username).map_err(|e| refuse(e.to_string()))?;
    if username.client_id() != connect.client_id {
        return Err(refuse(format!(
            "username names {:?} but ClientId is {:?}",
            username.client_id(),
            connect.client_id
        )));
    }
    if username.module_id.is_some() {
        return Err(refuse(
            "module identities are not supported by casement hub".into(),
        ));
    }
    if !shared.identity.is_own_host(&username.host) {
        return Err(refuse(format!(
            "username host {:?} is not this hub ({})",
            username.host,
            shared.identity.hostname()
        )));
    }
    let device_id = username.device_id;
    let now = u64::try_from(shared.clock.now().timestamp()).unwrap_or(0);
    let principal = shared
        .identity
        .verify(&login.password, now, |id| shared.registry.enabled_keys(id))
        .map_err(|e| refuse(e.to_string()))?;
    Identity::authorize_device(&principal, &device_id).map_err(|e| refuse(e.to_string()))?;
    if shared.registry.enabled_keys(&device_id).is_none() {
        return Err(refuse(format!(
            "device {device_id:?} is unknown or disabled"
        )));
    }
    if shared.throttle.try_acquire(Operation::Connections).is_err() {
        tracing::info!(device = device_id, "new-connection quota exceeded");
        return Err(ConnectReturnCode::ServiceUnavailable);
    }
    // The token verified, so it parses; its `se` bounds the session (IoT Hub drops a device
    // whose token expires; the SDKs reconnect with a new one before that).
    let se = SasToken::parse(&login.password).map_or(0, |t| t.se);
    Ok((device_id, shared.identity.expires_after(se)))
}

struct Connection<R, W> {
    shared: Arc<Shared>,
    device_id: String,
    conn_id: u64,
    reader: Reader<R>,
    writer: Writer<W>,
    rx: mpsc::Receiver<Outbound>,
    cancel: CancellationToken,
    keep_alive: Option<Duration>,
    /// Unix second (by the hub's clock) after which the CONNECT's token has expired.
    token_expires_after: u64,
}

impl<R, W> Connection<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    async fn run(&mut self) -> Result<&'static str, Closed> {
        let mut deadline = self.keep_alive.map(|d| Instant::now() + d);
        // False once a black-holed connection's stream has ended: the hub does not notice.
        let mut reading = true;
        let mut expiry_check = Instant::now() + EXPIRY_CHECK_INTERVAL;
        loop {
            let keep_alive = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    return Ok(if self.shared.shutdown.is_cancelled() {
                        "hub shutting down"
                    } else {
                        "closed by the hub (new connection for the device, device disabled or deleted, or too slow)"
                    });
                }
                out = self.rx.recv() => match out {
                    Some(_) if self.blackholed() => {}
                    Some(out) => self.writer.publish(out).await?,
                    None => return Ok("queue closed"),
                },
                packet = self.reader.next(), if reading => {
                    if self.blackholed() {
                        // Dropped, keep-alive not renewed; errors and the end of the stream
                        // go unnoticed too.
                        reading = matches!(packet, Ok(Some(_)));
                        continue;
                    }
                    let Some(packet) = packet? else {
                        return Ok("connection closed by the device");
                    };
                    deadline = self.keep_alive.map(|d| Instant::now() + d);
                    if let Some(why) = self.handle(packet).await? {
                        return Ok(why);
                    }
                }
                () = keep_alive => return Err(Closed::KeepAlive),
                () = tokio::time::sleep_until(expiry_check) => {
                    let now = u64::try_from(self.shared.clock.now().timestamp()).unwrap_or(0);
                    if now > self.token_expires_after {
                        return Ok("SAS token expired (the device must reconnect with a new one)");
                    }
                    expiry_check = Instant::now() + EXPIRY_CHECK_INTERVAL;
                }
            }
        }
    }

    fn blackholed(&self) -> bool {
        self.shared.faults.is_blackholed(self.conn_id)
    }

    /// Handles one packet; `Some(reason)` ends the connection cleanly.
    async fn handle(&mut self, packet: Packet) -> Result<Option<&'static str>, Closed> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish).await.map(|()| None),
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe).await.map(|()| None),
            Packet::Unsubscribe(unsubscribe) => {
                self.shared
                    .broker
                    .unsubscribe(&self.device_id, self.conn_id, &unsubscribe.topics);
                self.writer
                    .send(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)))
                    .await
                    .map(|()| None)
            }
            Packet::PingReq => self.writer.send(Packet::PingResp).await.map(|()| None),
            Packet::PubAck(_) => Ok(None),
            Packet::Disconnect => Ok(Some("DISCONNECT")),
            other => Err(Closed::Violation(format!(
                "unexpected {:?} from a device",
                packet_kind(&other)
            ))),
        }
    }

    async fn on_subscribe(&mut self, subscribe: Subscribe) -> Result<(), Closed> {
        let filters: Vec<(String, QoS)> = subscribe
            .filters
            .into_iter()
            .map(|f| (f.path, f.qos))
            .collect();
        let results = self
            .shared
            .broker
            .subscribe(&self.device_id, self.conn_id, &filters);
        let codes = results
            .into_iter()
            .zip(&filters)
            .map(|(result, (filter, _))| match result {
                Ok(qos) => SubscribeReasonCode::Success(qos),
                Err(refusal) => {
                    let why = match refusal {
                        SubscribeRefusal::Unsupported => "not a supported IoT Hub topic filter",
                        SubscribeRefusal::TooMany => "at most 5 subscriptions per device",
                    };
                    tracing::info!(
                        device = self.device_id,
                        filter,
                        "subscription refused: {why}"
                    );
                    SubscribeReasonCode::Failure
                }
            })
            .collect();
        self.writer
            .send(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
            .await
    }

    async fn on_publish(&mut self, publish: Publish) -> Result<(), Closed> {
        if publish.qos == QoS::ExactlyOnce {
            return Err(Closed::Violation(
                "QoS 2 PUBLISH is not supported by IoT Hub".into(),
            ));
        }
        let topic = DeviceToHub::parse_for(&publish.topic, &self.device_id, None)
            .map_err(|e| Closed::Violation(e.to_string()))?;
        let shared = self.shared.clone();
        match topic {
            DeviceToHub::Telemetry { .. } => {
                // Device-to-cloud traffic over quota is slowed down; with a full shaping queue
                // the connection is closed.
                if let Err(DeviceThrottled::Disconnect(op)) = shared.take_telemetry_quota().await {
                    return Err(Closed::Throttled(op));
                }
                shared.stats.telemetry.fetch_add(1, Ordering::Relaxed);
                shared.registry.touch(&self.device_id);
                self.ack(&publish).await?;
            }
            DeviceToHub::TwinGet { rid } => {
                self.ack(&publish).await?;
                let answer = match shared.take_device_quota(Operation::TwinReads).await {
                    Err(DeviceThrottled::Disconnect(op)) => return Err(Closed::Throttled(op)),
                    Err(DeviceThrottled::Answer(e)) => Err(e),
                    Ok(()) => shared.registry.twin_properties(&self.device_id),
                };
                shared.registry.touch(&self.device_id);
                match answer {
                    Ok(body) => self.twin_response(200, rid, None, json_bytes(&body)),
                    Err(e) => self.twin_error(rid, &e),
                }
            }
            DeviceToHub::ReportedPatch { rid } => {
                self.ack(&publish).await?;
                let result = match shared.take_device_quota(Operation::TwinUpdates).await {
                    Err(DeviceThrottled::Disconnect(op)) => return Err(Closed::Throttled(op)),
                    Err(DeviceThrottled::Answer(e)) => Err(e),
                    Ok(()) => self.report(&publish.payload).await,
                };
                match result {
                    Ok(version) => self.twin_response(204, rid, Some(version), Bytes::new()),
                    Err(e) => self.twin_error(rid, &e),
                }
            }
            DeviceToHub::MethodResponse { status, rid } => {
                self.ack(&publish).await?;
                shared.registry.touch(&self.device_id);
                let delivered = shared.methods.complete(
                    &self.device_id,
                    &rid,
                    MethodReply {
                        status,
                        payload: publish.payload,
                    },
                );
                if !delivered {
                    tracing::debug!(
                        device = self.device_id,
                        rid,
                        "late or unknown method response dropped"
                    );
                }
            }
        }
        Ok(())
    }

    async fn report(&self, payload: &[u8]) -> Result<u64, ApiError> {
        let shared = &self.shared;
        let patch: serde_json::Value = serde_json::from_slice(payload).map_err(|e| {
            ApiError::new(
                ErrorCode::IotHubFormatError,
                format!("reported properties patch is not valid JSON: {e}"),
            )
        })?;
        let version = shared.registry.report(&self.device_id, &patch)?;
        shared.store.flush().await?;
        Ok(version)
    }

    async fn ack(&mut self, publish: &Publish) -> Result<(), Closed> {
        if publish.qos == QoS::AtLeastOnce {
            self.writer
                .send(Packet::PubAck(PubAck::new(publish.pkid)))
                .await?;
        }
        Ok(())
    }

    fn twin_response(&self, status: u16, rid: String, version: Option<u64>, body: Bytes) {
        let topic = HubToDevice::TwinResponse {
            status,
            rid,
            version,
        };
        // Not subscribed to $iothub/twin/res/# means no answer, as in IoT Hub.
        let _ = self
            .shared
            .broker
            .publish(&self.device_id, &topic, body, QoS::AtLeastOnce);
    }

    fn twin_error(&self, rid: String, e: &ApiError) {
        tracing::info!(device = self.device_id, code = %e.code, "twin request failed: {}", e.message);
        let body = twin_error_body(e.code, &e.message);
        self.twin_response(e.code.http_status(), rid, None, json_bytes(&body));
    }
}

fn json_bytes(value: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

fn packet_kind(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_one_and_a_half_times_capped() {
        assert_eq!(keep_alive_timeout(0), Some(MAX_KEEP_ALIVE_TIMEOUT));
        assert_eq!(keep_alive_timeout(60), Some(Duration::from_secs(90)));
        assert_eq!(keep_alive_timeout(1740), Some(MAX_KEEP_ALIVE_TIMEOUT));
    }

    proptest::proptest! {
        /// The codec the hub trusts with untrusted bytes never panics, whatever arrives.
        #[test]
        fn arbitrary_bytes_never_panic_the_codec(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..64 {
                match Packet::read(&mut buf, 256) {
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }

        /// A valid CONNECT header followed by arbitrary bytes never panics either.
        #[test]
        fn arbitrary_connect_bodies_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            let mut bytes = vec![0x10, body.len() as u8];
            bytes.extend_from_slice(&body);
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = Packet::read(&mut buf, 1024);
        }
    }

    #[tokio::test]
    async fn reader_rejects_oversized_packets_before_buffering_them() {
        // A PUBLISH claiming 200 MB: refused from its fixed header alone.
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = Reader {
            io: server,
            buf: BytesMut::new(),
            max: 1024,
        };
        client
            .write_all(&[0x30, 0xff, 0xff, 0xff, 0x7f])
            .await
            .expect("write");
        let err = reader.next().await.expect_err("too large");
        assert!(
            matches!(
                err,
                Closed::Malformed(mqttbytes::Error::PayloadSizeLimitExceeded(_))
            ),
            "{err}"
        );
        assert!(reader.buf.capacity() < 4096);
    }

    #[tokio::test]
    async fn reader_reports_truncation_and_garbage() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = Reader {
            io: server,
            buf: BytesMut::new(),
            max: 1024,
        };
        client.write_all(&[0x30, 0x10, 0x00]).await.expect("write");
        drop(client);
        assert!(matches!(reader.next().await, Err(Closed::Violation(_))));

        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = Reader {
            io: server,
            buf: BytesMut::new(),
            max: 1024,
        };
        client.write_all(&[0xf0, 0x00]).await.expect("write");
        assert!(matches!(reader.next().await, Err(Closed::Malformed(_))));
    }
}
