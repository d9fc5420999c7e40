//! Silent power cuts for the simulator: a loopback relay in front of each simulated device's
//! MQTT connection that never passes on the device's side closing. When the simulated power
//! goes, the agent's socket closes, but the hub's socket stays open and silent — no FIN, no
//! DISCONNECT — as when a real device loses power mid-connection. The hub then notices only by
//! keep-alive (1.5 × keep-alive; Azure caps it at 1,767 s), and a direct method sent meanwhile
//! waits out its timeout (504101) rather than failing at once (404103).
//!
//! Bytes pass both ways unchanged (TLS too: the relay never looks inside). A hub closing its
//! side (keep-alive expiry, a newer connection of the same device) closes the device's side.
//! Held sockets are dropped with the relay.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::debug;

/// A relay for one device: listens on `127.0.0.1:0`, forwards to `upstream`.
#[derive(Debug)]
pub(crate) struct SilentRelay {
    addr: SocketAddr,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl SilentRelay {
    /// Starts relaying to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let accept_tasks = tasks.clone();
        tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spawn(async move {
                while let Ok((device, _)) = listener.accept().await {
                    accept_tasks
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .spawn(relay(device, upstream));
                }
            });
        Ok(Self { addr, tasks })
    }

    /// Where the device connects instead of the hub.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for SilentRelay {
    fn drop(&mut self) {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .abort_all();
    }
}

/// Copies both ways until the hub closes; the device closing goes unsaid.
async fn relay(mut device: TcpStream, upstream: SocketAddr) {
    let Ok(mut hub) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut from_device, mut to_device) = device.split();
    let (mut from_hub, mut to_hub) = hub.split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from_device.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    // The power went: say nothing to the hub, and keep its socket open.
                    debug!(%upstream, "device side closed; holding the hub's socket silently");
                    return std::future::pending::<()>().await;
                }
                Ok(n) => {
                    if to_hub.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut device_gone = false;
        loop {
            match from_hub.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) if !device_gone => {
                    // A device that is gone: what the hub sends is drained, unanswered.
                    device_gone = to_device.write_all(&buf[..n]).await.is_err();
                }
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_device_closing_is_not_passed_on_but_the_hub_closing_is() {
        let hub = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = SilentRelay::start(hub.local_addr().unwrap()).await.unwrap();

        // Bytes flow both ways.
        let mut device = TcpStream::connect(relay.addr()).await.unwrap();
        let (mut at_hub, _) = hub.accept().await.unwrap();
        device.write_all(b"CONNECT").await.unwrap();
        let mut buf = [0u8; 7];
        at_hub.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"CONNECT");
        at_hub.write_all(b"ACK").await.unwrap();
        let mut ack = [0u8; 3];
        device.read_exact(&mut ack).await.unwrap();
        assert_eq!(&ack, b"ACK");

        // The device's power goes: the hub reads no end of stream, only silence.
        drop(device);
        let read = tokio::time::timeout(Duration::from_millis(300), at_hub.read(&mut buf)).await;
        assert!(read.is_err(), "the hub saw {read:?}; it must see nothing");

        // The hub closing its side closes the device's.
        let mut device = TcpStream::connect(relay.addr()).await.unwrap();
        let (at_hub, _) = hub.accept().await.unwrap();
        drop(at_hub);
        let n = tokio::time::timeout(Duration::from_secs(5), device.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
