//! A raw MQTT 3.1.1 device connection (plain TCP, rumqttc's `mqttbytes::v4` codec): it sends
//! whatever bytes or packets a test asks for — well-formed, truncated or random — and reports
//! exactly what the hub answered, or that it closed the connection.
//!
//! The methods returning a `Result` ([`RawMqtt::connect`], [`RawMqtt::send`],
//! [`RawMqtt::next`], [`RawMqtt::try_subscribe`], …) report what happened, for tests where the
//! hub's reaction is the subject; the shorthands ([`RawMqtt::recv`], [`RawMqtt::subscribe`],
//! [`RawMqtt::publish`], [`RawMqtt::next_publish`], [`RawMqtt::expect_closed`]) panic, naming
//! what was expected, for the steps around it. [`Device`] is a connected device of a
//! [`RunningHub`] with twin shorthands.
//!
//! Also [`client_id_of`], which reads the client id out of the first bytes of a connection
//! (a CONNECT), for [fault proxy rules](crate::proxy::FaultProxy::add_rule) that single out
//! one device.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use casement_hub::RunningHub;
use casement_iothub::connection_string::DeviceConnectionString;
use casement_iothub::topic::MqttUsername;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Login, Packet, PubAck, Publish, SubAck, Subscribe,
    SubscribeFilter,
};
use rumqttc::mqttbytes::{self, Protocol, QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the panicking shorthands wait for a packet that should come promptly.
pub const WAIT: Duration = Duration::from_secs(10);

/// The largest packet this client accepts from the hub.
const MAX_PACKET: usize = 16 * 1024 * 1024;

/// Errors of the raw client.
#[derive(Debug, thiserror::Error)]
pub enum RawMqttError {
    /// A socket error (including a reset by the hub).
    #[error("MQTT socket: {0}")]
    Io(#[from] std::io::Error),
    /// The hub sent bytes that are not MQTT.
    #[error("the hub sent a malformed packet: {0:?}")]
    Malformed(mqttbytes::Error),
    /// A packet could not be encoded.
    #[error("cannot encode the packet: {0:?}")]
    Encode(mqttbytes::Error),
    /// Nothing arrived in time.
    #[error("no packet from the hub within {0:?}")]
    Timeout(Duration),
    /// The hub closed the connection.
    #[error("the hub closed the connection")]
    Closed,
    /// The hub answered something else than expected.
    #[error("unexpected packet from the hub: {0:?}")]
    Unexpected(Box<Packet>),
    /// Credentials could not be derived.
    #[error("cannot sign a device token: {0}")]
    Sign(String),
}

/// CONNECT credentials of a device: client id, username and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The MQTT client id (the device id).
    pub client_id: String,
    /// `{host}/{device}/?api-version=…`.
    pub username: String,
    /// The SAS token.
    pub password: String,
}

impl Credentials {
    /// The credentials a device derives from its connection string, with a token expiring at
    /// `expiry_unix`.
    ///
    /// # Errors
    /// When the connection string carries no usable key.
    pub fn for_device(cs: &DeviceConnectionString, expiry_unix: u64) -> Result<Self, RawMqttError> {
        let password = cs
            .password(expiry_unix)
            .map_err(|e| RawMqttError::Sign(e.to_string()))?
            .unwrap_or_default();
        Ok(Self {
            client_id: cs.client_id(),
            username: username(&cs.host_name, &cs.device_id),
            password,
        })
    }
}

/// The IoT Hub MQTT username of `device_id` on `host`, as the kit's devices send it.
pub fn username(host: &str, device_id: &str) -> String {
    MqttUsername::new(host, device_id, None, "casement-tests/0.1").to_string()
}

/// A raw device connection.
#[derive(Debug)]
pub struct RawMqtt {
    stream: TcpStream,
    buf: BytesMut,
    next_pkid: u16,
}

impl RawMqtt {
    /// Opens a TCP connection.
    ///
    /// # Errors
    /// When the connection fails.
    pub async fn open(addr: SocketAddr) -> Result<Self, RawMqttError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: BytesMut::new(),
            next_pkid: 0,
        })
    }

    /// Opens a connection and sends CONNECT (CleanSession=0, as the SDKs do); returns the
    /// CONNACK return code.
    ///
    /// # Errors
    /// When the hub does not answer with a CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        credentials: &Credentials,
        within: Duration,
    ) -> Result<(Self, ConnectReturnCode), RawMqttError> {
        let mut mqtt = Self::open(addr).await?;
        let ack = mqtt.try_connect(credentials, false, 60, within).await?;
        Ok((mqtt, ack.code))
    }

    /// Sends CONNECT on this connection and returns the CONNACK.
    ///
    /// # Errors
    /// When the hub does not answer with a CONNACK `within` ([`RawMqttError::Closed`] when it
    /// closes the connection instead).
    pub async fn try_connect(
        &mut self,
        credentials: &Credentials,
        clean_session: bool,
        keep_alive: u16,
        within: Duration,
    ) -> Result<ConnAck, RawMqttError> {
        let mut connect = Connect::new(credentials.client_id.as_str());
        connect.protocol = Protocol::V4;
        connect.keep_alive = keep_alive;
        connect.clean_session = clean_session;
        connect.login = Some(Login::new(
            credentials.username.as_str(),
            credentials.password.as_str(),
        ));
        self.send(&Packet::Connect(connect)).await?;
        match self.next(within).await? {
            Packet::ConnAck(ack) => Ok(ack),
            other => Err(RawMqttError::Unexpected(Box::new(other))),
        }
    }

    /// [`try_connect`](Self::try_connect) within [`WAIT`]: the CONNACK, or `None` when the hub
    /// closed the connection instead.
    ///
    /// # Panics
    /// When the hub answers something else, or nothing in time.
    pub async fn connect_raw(
        &mut self,
        client_id: &str,
        username: &str,
        password: &str,
        clean_session: bool,
        keep_alive: u16,
    ) -> Option<ConnAck> {
        let credentials = Credentials {
            client_id: client_id.to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
        };
        match self
            .try_connect(&credentials, clean_session, keep_alive, WAIT)
            .await
        {
            Ok(ack) => Some(ack),
            Err(RawMqttError::Closed | RawMqttError::Io(_)) => None,
            Err(e) => panic!("expected a CONNACK for {client_id:?}: {e}"),
        }
    }

    /// The next packet id (never 0).
    pub fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        self.next_pkid
    }

    /// Sends raw bytes.
    ///
    /// # Errors
    /// When the socket fails (the hub may already have closed it).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), RawMqttError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Half-closes the connection: the hub reads the end of the stream after what was sent.
    ///
    /// # Errors
    /// When the socket fails.
    pub async fn finish_writing(&mut self) -> Result<(), RawMqttError> {
        self.stream.shutdown().await?;
        Ok(())
    }

    /// Encodes and sends a packet.
    ///
    /// # Errors
    /// When encoding or the socket fails.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), RawMqttError> {
        let bytes = encode(packet)?;
        self.send_bytes(&bytes).await
    }

    /// Subscribes to `filters` and waits for the SUBACK (skipping publishes meanwhile).
    ///
    /// # Errors
    /// When no SUBACK for this SUBSCRIBE arrives `within`.
    pub async fn try_subscribe(
        &mut self,
        filters: &[(&str, QoS)],
        within: Duration,
    ) -> Result<SubAck, RawMqttError> {
        let pkid = self.pkid();
        let mut subscribe = Subscribe::new_many(
            filters
                .iter()
                .map(|(f, q)| SubscribeFilter::new((*f).to_owned(), *q)),
        );
        subscribe.pkid = pkid;
        self.send(&Packet::Subscribe(subscribe)).await?;
        loop {
            match self.next(within).await? {
                Packet::SubAck(ack) if ack.pkid == pkid => return Ok(ack),
                Packet::Publish(_) => continue,
                other => return Err(RawMqttError::Unexpected(Box::new(other))),
            }
        }
    }

    /// [`try_subscribe`](Self::try_subscribe) within [`WAIT`].
    ///
    /// # Panics
    /// When no SUBACK arrives.
    pub async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> SubAck {
        self.try_subscribe(filters, WAIT)
            .await
            .unwrap_or_else(|e| panic!("expected a SUBACK for {filters:?}: {e}"))
    }

    /// Publishes at QoS 0.
    ///
    /// # Errors
    /// When the socket fails.
    pub async fn try_publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), RawMqttError> {
        self.send(&Packet::Publish(Publish::new(
            topic,
            QoS::AtMostOnce,
            payload,
        )))
        .await
    }

    /// Publishes at `qos`; at QoS 1 waits for the PUBACK and returns the publishes that
    /// arrived meanwhile.
    ///
    /// # Panics
    /// When the socket fails, or something else than a PUBACK or PUBLISH arrives.
    pub async fn publish(&mut self, topic: &str, qos: QoS, payload: &[u8]) -> Vec<Publish> {
        let mut publish = Publish::new(topic, qos, payload.to_vec());
        if qos != QoS::AtMostOnce {
            publish.pkid = self.pkid();
        }
        let pkid = publish.pkid;
        self.send(&Packet::Publish(publish))
            .await
            .unwrap_or_else(|e| panic!("cannot publish to {topic}: {e}"));
        let mut others = Vec::new();
        if qos == QoS::AtLeastOnce {
            loop {
                match self.recv().await {
                    Some(Packet::PubAck(ack)) if ack.pkid == pkid => break,
                    Some(Packet::Publish(p)) => others.push(p),
                    other => panic!("expected the PUBACK for {topic}, got {other:?}"),
                }
            }
        }
        others
    }

    /// The next PUBLISH from the hub (acknowledging it at QoS 1), skipping PUBACKs.
    ///
    /// # Panics
    /// When something else arrives, or nothing within [`WAIT`].
    pub async fn next_publish(&mut self) -> Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(p)) => {
                    if p.qos == QoS::AtLeastOnce {
                        self.send(&Packet::PubAck(PubAck::new(p.pkid)))
                            .await
                            .unwrap_or_else(|e| panic!("cannot acknowledge {}: {e}", p.topic));
                    }
                    return p;
                }
                Some(Packet::PubAck(_)) => continue,
                other => panic!("expected a PUBLISH, got {other:?}"),
            }
        }
    }

    /// Publishes a twin request and returns the response's topic and body (other packets in
    /// between are skipped).
    ///
    /// # Errors
    /// When no response arrives.
    pub async fn twin_request(
        &mut self,
        topic: &str,
        payload: &[u8],
        within: Duration,
    ) -> Result<(String, Vec<u8>), RawMqttError> {
        self.try_publish(topic, payload).await?;
        loop {
            if let Packet::Publish(p) = self.next(within).await?
                && p.topic.starts_with("$iothub/twin/res/")
            {
                return Ok((p.topic, p.payload.to_vec()));
            }
        }
    }

    /// The next packet from the hub.
    ///
    /// # Errors
    /// [`RawMqttError::Closed`] at the end of the stream, [`RawMqttError::Timeout`] when
    /// nothing arrives `within`.
    pub async fn next(&mut self, within: Duration) -> Result<Packet, RawMqttError> {
        tokio::time::timeout(within, self.next_packet())
            .await
            .map_err(|_| RawMqttError::Timeout(within))?
    }

    /// The next packet within [`WAIT`], or `None` when the hub closed the connection (cleanly
    /// or by reset).
    ///
    /// # Panics
    /// When nothing arrives in time or the hub sends bytes that are not MQTT.
    pub async fn recv(&mut self) -> Option<Packet> {
        Self::closed_or_packet(self.next(WAIT).await)
    }

    /// [`recv`](Self::recv) without a time limit, for tests that pause or drive time.
    ///
    /// # Panics
    /// When the hub sends bytes that are not MQTT.
    pub async fn recv_forever(&mut self) -> Option<Packet> {
        Self::closed_or_packet(self.next_packet().await)
    }

    fn closed_or_packet(next: Result<Packet, RawMqttError>) -> Option<Packet> {
        match next {
            Ok(packet) => Some(packet),
            Err(RawMqttError::Closed | RawMqttError::Io(_)) => None,
            Err(e) => panic!("expected a packet or the end of the connection: {e}"),
        }
    }

    /// Asserts that the hub closes the connection within [`WAIT`] per packet, after possibly
    /// sending publishes and PUBACKs.
    ///
    /// # Panics
    /// When anything else arrives first, or nothing in time.
    pub async fn expect_closed(&mut self) {
        while let Some(p) = self.recv().await {
            if let Packet::Publish(_) | Packet::PubAck(_) = p {
                continue;
            }
            panic!("expected the hub to close the connection, got {p:?}");
        }
    }

    async fn next_packet(&mut self) -> Result<Packet, RawMqttError> {
        loop {
            match Packet::read(&mut self.buf, MAX_PACKET) {
                Ok(packet) => return Ok(packet),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        return Err(RawMqttError::Closed);
                    }
                }
                Err(e) => return Err(RawMqttError::Malformed(e)),
            }
        }
    }

    /// Waits until the hub closes the connection, skipping packets; `true` when it did
    /// (cleanly or by reset) within `within`.
    pub async fn closed_by_hub(&mut self, within: Duration) -> bool {
        let wait = async {
            loop {
                match self.next_packet().await {
                    Ok(_) => continue,
                    Err(
                        RawMqttError::Closed | RawMqttError::Io(_) | RawMqttError::Malformed(_),
                    ) => {
                        return true;
                    }
                    Err(_) => return false,
                }
            }
        };
        tokio::time::timeout(within, wait).await.unwrap_or(false)
    }
}

/// A device of a [`RunningHub`] connected to its plain MQTT listener.
#[derive(Debug)]
pub struct Device {
    /// The connection.
    pub mqtt: RawMqtt,
    /// The CONNACK's session-present flag.
    pub session_present: bool,
}

impl Device {
    /// Creates the device (unless it exists) and connects it with CleanSession=0.
    ///
    /// # Panics
    /// When the device cannot be created or is refused.
    pub async fn create_and_connect(hub: &RunningHub, id: &str) -> Device {
        let cs = match hub.device_connection_string(id) {
            Some(cs) => cs,
            None => hub
                .create_device(id, Value::Null)
                .await
                .unwrap_or_else(|e| panic!("cannot create device {id}: {e}")),
        };
        Device::connect(hub, id, &cs, false).await
    }

    /// Connects device `id` with its connection string `cs` and a token valid for an hour.
    ///
    /// # Panics
    /// Unless the hub accepts the connection.
    pub async fn connect(hub: &RunningHub, id: &str, cs: &str, clean_session: bool) -> Device {
        let cs: DeviceConnectionString = cs
            .parse()
            .unwrap_or_else(|e| panic!("device connection string of {id}: {e}"));
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3600;
        let credentials = Credentials::for_device(&cs, expiry)
            .unwrap_or_else(|e| panic!("credentials of {id}: {e}"));
        let mut mqtt = RawMqtt::open(hub.mqtt_addr().expect("the hub has a plain MQTT listener"))
            .await
            .unwrap_or_else(|e| panic!("device {id} cannot reach the hub: {e}"));
        let ack = mqtt
            .connect_raw(
                id,
                &credentials.username,
                &credentials.password,
                clean_session,
                60,
            )
            .await
            .unwrap_or_else(|| panic!("the hub closed device {id}'s connection, no CONNACK"));
        assert_eq!(ack.code, ConnectReturnCode::Success, "device {id} connects");
        Device {
            mqtt,
            session_present: ack.session_present,
        }
    }

    /// Sends a twin GET with request id `rid` and returns the response's (topic, body).
    ///
    /// # Panics
    /// When the response does not come or is not JSON.
    pub async fn twin_get(&mut self, rid: &str) -> (String, Value) {
        self.twin_call(&format!("$iothub/twin/GET/?$rid={rid}"), b" ", rid)
            .await
    }

    /// Sends a reported-properties patch with request id `rid` and returns the response's
    /// (topic, body).
    ///
    /// # Panics
    /// When the response does not come or is not JSON.
    pub async fn report(&mut self, rid: &str, patch: &Value) -> (String, Value) {
        let body = serde_json::to_vec(patch).expect("a JSON value serialises");
        self.twin_call(
            &format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
            &body,
            rid,
        )
        .await
    }

    async fn twin_call(&mut self, topic: &str, payload: &[u8], rid: &str) -> (String, Value) {
        self.mqtt.publish(topic, QoS::AtLeastOnce, payload).await;
        let p = self.mqtt.next_publish().await;
        assert!(p.topic.starts_with("$iothub/twin/res/"), "{}", p.topic);
        assert!(p.topic.contains(&format!("$rid={rid}")), "{}", p.topic);
        let body = if p.payload.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&p.payload)
                .unwrap_or_else(|e| panic!("twin response on {} is not JSON: {e}", p.topic))
        };
        (p.topic, body)
    }
}

/// Encodes a packet.
///
/// # Errors
/// When the packet is too large or invalid.
pub fn encode(packet: &Packet) -> Result<Vec<u8>, RawMqttError> {
    let mut buf = BytesMut::new();
    packet
        .write(&mut buf, MAX_PACKET)
        .map_err(RawMqttError::Encode)?;
    Ok(buf.to_vec())
}

/// The client id of the CONNECT at the start of `preamble`, when it holds a whole one.
pub fn client_id_of(preamble: &[u8]) -> Option<String> {
    let mut buf = BytesMut::from(preamble);
    match Packet::read(&mut buf, MAX_PACKET) {
        Ok(Packet::Connect(connect)) => Some(connect.client_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_is_read_from_a_connect_and_nothing_else() {
        let mut connect = Connect::new("sim-0042");
        connect.login = Some(Login::new("localhost/sim-0042/?api-version=x", "token"));
        let bytes = encode(&Packet::Connect(connect)).expect("encode");
        assert_eq!(client_id_of(&bytes).as_deref(), Some("sim-0042"));
        // A partial CONNECT, another packet, garbage: no id.
        assert_eq!(client_id_of(&bytes[..bytes.len() - 3]), None);
        let publish =
            encode(&Packet::Publish(Publish::new("t", QoS::AtMostOnce, "x"))).expect("encode");
        assert_eq!(client_id_of(&publish), None);
        assert_eq!(client_id_of(b"GET / HTTP/1.1\r\n"), None);
    }
}
