//! Binding the four listeners, with errors that say which flag to change, and the accept
//! loops that cap connections and finish TLS handshakes off the accept path.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;

/// One of the hub's listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// MQTT over TLS.
    Mqtts,
    /// Plain MQTT.
    Mqtt,
    /// The REST API over HTTPS.
    Https,
    /// The REST API over plain HTTP.
    Http,
}

impl Endpoint {
    /// The `casement hub` flag that sets this listener's address.
    pub fn flag(self) -> &'static str {
        match self {
            Endpoint::Mqtts => "--mqtts-addr",
            Endpoint::Mqtt => "--mqtt-addr",
            Endpoint::Https => "--https-addr",
            Endpoint::Http => "--http-addr",
        }
    }

    /// The flag that turns this listener off.
    pub fn off_flag(self) -> &'static str {
        match self {
            Endpoint::Mqtts => "--no-mqtts",
            Endpoint::Mqtt => "--no-mqtt",
            Endpoint::Https => "--no-https",
            Endpoint::Http => "--no-http",
        }
    }

    fn example_port(self) -> u16 {
        match self {
            Endpoint::Mqtts => 8884,
            Endpoint::Mqtt => 1884,
            Endpoint::Https => 8443,
            Endpoint::Http => 8081,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endpoint::Mqtts => "MQTT over TLS",
            Endpoint::Mqtt => "MQTT",
            Endpoint::Https => "HTTPS",
            Endpoint::Http => "HTTP",
        })
    }
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("{}", bind_message(*endpoint, *addr, source))]
pub struct BindError {
    /// Which listener.
    pub endpoint: Endpoint,
    /// The address asked for.
    pub addr: SocketAddr,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

fn bind_message(endpoint: Endpoint, addr: SocketAddr, source: &io::Error) -> String {
    let mut alternative = addr;
    alternative.set_port(endpoint.example_port());
    let change = format!(
        "use {} {alternative} (or {} to turn it off)",
        endpoint.flag(),
        endpoint.off_flag()
    );
    match source.kind() {
        io::ErrorKind::AddrInUse => format!(
            "cannot listen for {endpoint} on {addr}: the port is already in use (another `casement hub`?); {change}"
        ),
        io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "cannot listen for {endpoint} on {addr}: ports below 1024 need privileges \
             (root, or `sudo setcap cap_net_bind_service=+ep <casement binary>`); {change}"
        ),
        io::ErrorKind::AddrNotAvailable => {
            format!("cannot listen for {endpoint} on {addr}: no such local address; {change}")
        }
        _ => format!("cannot listen for {endpoint} on {addr}: {source}; {change}"),
    }
}

/// Binds a listener.
pub(crate) async fn bind(endpoint: Endpoint, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        endpoint,
        addr,
        source,
    })
}

/// A stream that holds a connection-cap permit (or admission ticket) for as long as it is open.
#[derive(Debug)]
pub(crate) struct Counted<S, P = OwnedSemaphorePermit> {
    inner: S,
    _permit: P,
}

impl<S, P> Counted<S, P> {
    pub(crate) fn new(inner: S, permit: P) -> Self {
        Self {
            inner,
            _permit: permit,
        }
    }
}

impl<S: AsyncRead + Unpin, P: Unpin> AsyncRead for Counted<S, P> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin, P: Unpin> AsyncWrite for Counted<S, P> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections until cancelled, taking a permit from `cap` for each (connections
/// beyond the cap are closed at once), and hands each to `on_conn`.
pub(crate) async fn accept_loop<F>(
    listener: TcpListener,
    endpoint: Endpoint,
    cap: Arc<Semaphore>,
    cancel: CancellationToken,
    mut on_conn: F,
) where
    F: FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
{
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                match cap.clone().try_acquire_owned() {
                    Ok(permit) => on_conn(stream, peer, permit),
                    Err(_) => {
                        tracing::warn!(%peer, %endpoint, "connection limit reached; refusing a connection");
                        drop(stream);
                    }
                }
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(%endpoint, error = %e, "accept failed");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

/// Either a plain or a TLS stream, for code that serves both.
pub(crate) type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// How HTTP(S) connections are served.
#[derive(Clone)]
pub(crate) struct HttpServing {
    /// The REST API.
    pub(crate) router: axum::Router,
    /// How long a new connection may take to send its first byte, and then its TLS handshake.
    pub(crate) handshake_timeout: Duration,
    /// How long a connection may go without a complete request header: the keep-alive idle
    /// limit, and the bound on a client that trickles its header (slowloris).
    pub(crate) idle_timeout: Duration,
}

/// Spawns the accept task for an HTTP(S) listener; every connection is served on its own task
/// in `tasks`, so shutting down waits for them. Slots are handed out by `admission` (see
/// [`crate::admission`]): a connection first has `handshake_timeout` to send a byte and may be
/// evicted for a newer one until it does.
pub(crate) fn http_listener(
    listener: TcpListener,
    endpoint: Endpoint,
    tls: Option<TlsAcceptor>,
    admission: Arc<Admission>,
    serving: HttpServing,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) {
    let inner_tasks = tasks.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%endpoint, error = %e, "accept failed");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let ticket = match admission.admit(peer.ip()) {
                Ok(ticket) => ticket,
                Err(why) => {
                    tracing::warn!(%peer, %endpoint, ?why, "connection limit reached; refusing a connection");
                    drop(stream);
                    continue;
                }
            };
            let serving = serving.clone();
            let cancel = cancel.clone();
            let tls = tls.clone();
            inner_tasks.spawn(async move {
                // Silent connections get a short deadline (never longer than the idle limit)
                // and can be evicted.
                let silent_limit = serving.handshake_timeout.min(serving.idle_timeout);
                let mut first = [0u8; 1];
                let spoke = tokio::select! {
                    () = cancel.cancelled() => return,
                    () = ticket.evicted().cancelled() => {
                        tracing::debug!(%peer, "silent HTTP connection evicted for a newer one");
                        return;
                    }
                    r = tokio::time::timeout(silent_limit, stream.peek(&mut first)) => r,
                };
                match spoke {
                    Ok(Ok(n)) if n > 0 && ticket.spoke() => {}
                    Ok(_) => return,
                    Err(_) => {
                        tracing::debug!(%peer, "HTTP connection sent nothing in time; closed");
                        return;
                    }
                }
                match tls {
                    None => {
                        let conn = Counted::new(HttpStream::Plain(stream), ticket);
                        serve_http(conn, peer, serving, cancel).await;
                    }
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(serving.handshake_timeout, acceptor.accept(stream));
                        let stream = tokio::select! {
                            () = cancel.cancelled() => return,
                            r = handshake => r,
                        };
                        match stream {
                            Ok(Ok(stream)) => {
                                let conn = Counted::new(HttpStream::Tls(Box::new(stream)), ticket);
                                serve_http(conn, peer, serving, cancel).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    });
}

/// Serves one HTTP/1.1 connection until the client closes it, it goes `idle_timeout` without a
/// complete request header (hyper's header-read timer runs from the connection's start and
/// again from each response's end), or the hub shuts down — gracefully: a request in progress
/// (a direct method waiting for its device) is still answered.
async fn serve_http<S>(io: S, peer: SocketAddr, serving: HttpServing, cancel: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(serving.router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(serving.idle_timeout);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    match served {
        Ok(()) => {}
        Err(e) if e.is_timeout() => {
            tracing::debug!(%peer, "HTTP connection idle or too slow to send a request; closed");
        }
        Err(e) => tracing::debug!(%peer, error = %e, "HTTP connection failed"),
    }
}

/// A plain or TLS HTTP connection.
pub(crate) enum HttpStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<TlsStream>),
}

impl AsyncRead for HttpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for HttpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            HttpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            HttpStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_names_the_flag() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = bind(Endpoint::Mqtt, addr).await.expect_err("in use");
        let msg = err.to_string();
        assert!(msg.contains("already in use"), "{msg}");
        assert!(msg.contains("--mqtt-addr"), "{msg}");
        assert!(msg.contains("--no-mqtt"), "{msg}");
    }

    #[test]
    fn privileged_port_message_explains_the_options() {
        let err = BindError {
            endpoint: Endpoint::Https,
            addr: "127.0.0.1:443".parse().expect("addr"),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        let msg = err.to_string();
        assert!(msg.contains("below 1024 need privileges"), "{msg}");
        assert!(msg.contains("--https-addr 127.0.0.1:8443"), "{msg}");
    }
}
