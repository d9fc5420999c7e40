//! A raw MQTT 3.1.1 device connection (plain TCP, rumqttc's `mqttbytes::v4` codec): it sends
//! whatever bytes or packets a test asks for — well-formed, truncated or random — and reports
//! exactly what the hub answered, or that it closed the connection.
//!
//! Also [`client_id_of`], which reads the client id out of the first bytes of a connection
//! (a CONNECT), for [fault proxy rules](crate::proxy::FaultProxy::add_rule) that single out
//! one device.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use casement_iothub::connection_string::DeviceConnectionString;
use casement_iothub::topic::MqttUsername;
use rumqttc::mqttbytes::v4::{Connect, ConnectReturnCode, Login, Packet, Publish, Subscribe};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest packet this client accepts from the hub.
const MAX_PACKET: usize = 1024 * 1024;

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
            username: MqttUsername::new(&cs.host_name, &cs.device_id, None, "casement-tests/0.1")
                .to_string(),
            password,
        })
    }
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
        let mut connect = Connect::new(credentials.client_id.clone());
        connect.keep_alive = 60;
        connect.clean_session = false;
        connect.login = Some(Login::new(
            credentials.username.clone(),
            credentials.password.clone(),
        ));
        mqtt.send(&Packet::Connect(connect)).await?;
        match mqtt.next(within).await? {
            Packet::ConnAck(ack) => Ok((mqtt, ack.code)),
            other => Err(RawMqttError::Unexpected(Box::new(other))),
        }
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

    /// Subscribes to `filters` and waits for the SUBACK.
    ///
    /// # Errors
    /// When no SUBACK arrives.
    pub async fn subscribe(
        &mut self,
        filters: &[&str],
        within: Duration,
    ) -> Result<(), RawMqttError> {
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        let mut subscribe = Subscribe::new_many(filters.iter().map(|f| {
            rumqttc::mqttbytes::v4::SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce)
        }));
        subscribe.pkid = self.next_pkid;
        self.send(&Packet::Subscribe(subscribe)).await?;
        loop {
            match self.next(within).await? {
                Packet::SubAck(_) => return Ok(()),
                Packet::Publish(_) => continue,
                other => return Err(RawMqttError::Unexpected(Box::new(other))),
            }
        }
    }

    /// Publishes at QoS 0.
    ///
    /// # Errors
    /// When the socket fails.
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), RawMqttError> {
        self.send(&Packet::Publish(Publish::new(
            topic,
            QoS::AtMostOnce,
            payload,
        )))
        .await
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
        self.publish(topic, payload).await?;
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
