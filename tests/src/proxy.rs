//! A TCP fault proxy on loopback: put it between a client and a server and break the link on
//! command.
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` and forwards every accepted connection to a
//! target address (which can be changed at run time, so clients keep one address while the
//! server behind it restarts on a new port). Faults are set globally or per connection, and
//! take effect on the next chunk read:
//!
//! - [`Fault::Pass`]: forward as read.
//! - [`Fault::Delay`]: hold every chunk, in both directions, for a fixed time before writing it
//!   (latency, not bandwidth: later chunks are read while earlier ones wait, in order).
//! - [`Fault::Drop`]: a blackhole — keep reading, forward nothing. The bytes are gone; a
//!   connection that was blackholed and then passed again has a hole in its stream, as after a
//!   broken middlebox, so tests usually [cut](FaultProxy::cut_all) it afterwards.
//!
//! and connections are cut (closed with a TCP reset on both sides) one by one, by predicate or
//! all at once, optionally refusing new connections for a while (accepted, then reset at once:
//! the listener stays bound so the address stays valid).
//!
//! Everything is bounded: at most [`ProxyConfig::max_connections`] connections, and per
//! direction at most [`ProxyConfig::queue_chunks`] chunks of [`ProxyConfig::chunk_size`] bytes
//! between reading and writing — a peer that does not read stalls its sender through TCP flow
//! control instead of growing the proxy's memory. Timers are tokio's, so
//! `tokio::time::pause()` drives delays and refusal periods.
//!
//! Each connection remembers the first [`ProxyConfig::preamble_len`] bytes the client sent (an
//! MQTT CONNECT, an HTTP request line), so a test can pick out one device's connection without
//! the proxy knowing any protocol. [Rules](FaultProxy::add_rule) act on those bytes as they
//! arrive: "cut every connection whose preamble says device 17, now and until the rule is
//! removed" keeps one client offline while the others pass, before the server sees a byte of it.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// What the proxy does to the bytes of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward everything as soon as it is read.
    #[default]
    Pass,
    /// Hold each chunk this long before writing it, in both directions.
    Delay(Duration),
    /// Read and discard everything, in both directions; nothing is forwarded.
    Drop,
}

/// What a [rule](FaultProxy::add_rule) does to a connection whose preamble it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Cut it (reset both sides) before the matching bytes are forwarded.
    Cut,
    /// Give it this fault, from the matching bytes on.
    Fault(Fault),
}

/// Identifies a rule, to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(u64);

type Matcher = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

struct Rule {
    id: RuleId,
    matches: Matcher,
    action: RuleAction,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("id", &self.id)
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

/// Limits and sizes of a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Open connections; more are refused (accepted and reset).
    pub max_connections: usize,
    /// The largest chunk read at once.
    pub chunk_size: usize,
    /// Chunks queued between reading and writing, per direction of a connection.
    pub queue_chunks: usize,
    /// How long connecting to the target may take before the client is reset.
    pub connect_timeout: Duration,
    /// How many of the client's first bytes each connection remembers.
    pub preamble_len: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            chunk_size: 16 * 1024,
            queue_chunks: 32,
            connect_timeout: Duration::from_secs(5),
            preamble_len: 1024,
        }
    }
}

impl ProxyConfig {
    /// The most bytes one direction of one connection holds between reading and writing.
    pub fn max_buffered_per_direction(&self) -> usize {
        // The queue, plus the chunk the writer holds, plus the one the reader is sending.
        (self.queue_chunks + 2) * self.chunk_size
    }
}

/// Errors starting a proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket could not be bound.
    #[error("the fault proxy cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A setting is out of range.
    #[error("invalid fault proxy setting: {0}")]
    Config(&'static str),
}

/// Identifies one proxied connection for as long as the proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn-{}", self.0)
    }
}

/// A snapshot of one open connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Its id.
    pub id: ConnectionId,
    /// The client's address.
    pub peer: SocketAddr,
    /// Its own fault, overriding the global one; `None` follows the global fault.
    pub fault: Option<Fault>,
    /// The first bytes the client sent (up to [`ProxyConfig::preamble_len`]).
    pub preamble: Vec<u8>,
}

/// Counters since the proxy started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyStats {
    /// Connections accepted and forwarded.
    pub accepted: u64,
    /// Connections refused (while refusing, or over the connection cap).
    pub refused: u64,
    /// Connections reset because the target could not be reached.
    pub upstream_failures: u64,
    /// Connections cut on command.
    pub cut: u64,
    /// Connections open now.
    pub open: u64,
    /// Bytes read from clients.
    pub read_from_clients: u64,
    /// Bytes written to the target.
    pub written_to_target: u64,
    /// Bytes read from the target.
    pub read_from_target: u64,
    /// Bytes written to clients.
    pub written_to_clients: u64,
    /// Bytes discarded by [`Fault::Drop`], both directions.
    pub dropped: u64,
}

impl ProxyStats {
    /// Bytes read but neither written nor dropped yet, both directions together.
    pub fn in_flight(&self) -> u64 {
        (self.read_from_clients + self.read_from_target)
            .saturating_sub(self.written_to_target + self.written_to_clients + self.dropped)
    }
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    upstream_failures: AtomicU64,
    cut: AtomicU64,
    read_from_clients: AtomicU64,
    written_to_target: AtomicU64,
    read_from_target: AtomicU64,
    written_to_clients: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusing {
    No,
    Until(Instant),
    Indefinitely,
}

#[derive(Debug)]
struct Conn {
    peer: SocketAddr,
    fault: Option<Fault>,
    cancel: CancellationToken,
    preamble: Vec<u8>,
    /// A rule already matched this connection (rules act once per connection).
    ruled: bool,
}

#[derive(Debug)]
struct State {
    target: SocketAddr,
    fault: Fault,
    refusing: Refusing,
    conns: HashMap<ConnectionId, Conn>,
    next_id: u64,
    rules: Vec<Rule>,
    next_rule: u64,
}

impl State {
    /// The first rule matching `preamble`, if any.
    fn rule_for(&self, preamble: &[u8]) -> Option<RuleAction> {
        self.rules
            .iter()
            .find(|rule| (rule.matches)(preamble))
            .map(|rule| rule.action)
    }
}

/// What to do with a chunk just read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Apply(Fault),
    Cut,
}

#[derive(Debug)]
struct Shared {
    config: ProxyConfig,
    state: Mutex<State>,
    counters: Counters,
    open: watch::Sender<usize>,
    root: CancellationToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToTarget,
    ToClient,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under every lock holder; a panic elsewhere does not
        // invalidate it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection, or `None` when refusing or full.
    fn admit(&self, peer: SocketAddr) -> Option<(ConnectionId, SocketAddr, CancellationToken)> {
        let mut state = self.lock();
        if let Refusing::Until(until) = state.refusing
            && Instant::now() >= until
        {
            state.refusing = Refusing::No;
        }
        if state.refusing != Refusing::No || state.conns.len() >= self.config.max_connections {
            return None;
        }
        state.next_id += 1;
        let id = ConnectionId(state.next_id);
        let cancel = self.root.child_token();
        state.conns.insert(
            id,
            Conn {
                peer,
                fault: None,
                cancel: cancel.clone(),
                preamble: Vec::new(),
                ruled: false,
            },
        );
        let open = state.conns.len();
        let target = state.target;
        drop(state);
        self.open.send_replace(open);
        Some((id, target, cancel))
    }

    fn remove(&self, id: ConnectionId) {
        let mut state = self.lock();
        if state.conns.remove(&id).is_some() {
            let open = state.conns.len();
            drop(state);
            self.open.send_replace(open);
        }
    }

    /// Cuts the connections `pick` selects; returns how many.
    fn cut(&self, mut pick: impl FnMut(ConnectionId, &Conn) -> bool) -> usize {
        let mut state = self.lock();
        let ids: Vec<ConnectionId> = state
            .conns
            .iter()
            .filter(|(id, conn)| pick(**id, conn))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(conn) = state.conns.remove(id) {
                conn.cancel.cancel();
            }
        }
        let open = state.conns.len();
        drop(state);
        self.open.send_replace(open);
        let n = ids.len();
        self.counters.cut.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Notes a chunk read on connection `id` and decides what to do with it: the connection's
    /// fault, unless a rule matches its preamble now.
    fn on_chunk(&self, id: ConnectionId, direction: Direction, chunk: &[u8]) -> Verdict {
        let (read, _) = self.byte_counters(direction);
        read.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        let mut state = self.lock();
        let global = state.fault;
        let Some(conn) = state.conns.get_mut(&id) else {
            // Cut a moment ago: forward nothing more.
            return Verdict::Cut;
        };
        let mut grew = false;
        if direction == Direction::ToTarget {
            let room = self.config.preamble_len.saturating_sub(conn.preamble.len());
            let take = room.min(chunk.len());
            conn.preamble.extend_from_slice(&chunk[..take]);
            grew = take > 0;
        }
        let own = conn.fault;
        if grew && !conn.ruled {
            let preamble = std::mem::take(&mut conn.preamble);
            let action = state.rule_for(&preamble);
            let Some(conn) = state.conns.get_mut(&id) else {
                return Verdict::Cut;
            };
            conn.preamble = preamble;
            match action {
                Some(RuleAction::Cut) => {
                    if let Some(conn) = state.conns.remove(&id) {
                        conn.cancel.cancel();
                    }
                    let open = state.conns.len();
                    drop(state);
                    self.open.send_replace(open);
                    self.counters.cut.fetch_add(1, Ordering::Relaxed);
                    return Verdict::Cut;
                }
                Some(RuleAction::Fault(fault)) => {
                    conn.fault = Some(fault);
                    conn.ruled = true;
                    return Verdict::Apply(fault);
                }
                None => {}
            }
        }
        Verdict::Apply(own.unwrap_or(global))
    }

    fn byte_counters(&self, direction: Direction) -> (&AtomicU64, &AtomicU64) {
        match direction {
            Direction::ToTarget => (
                &self.counters.read_from_clients,
                &self.counters.written_to_target,
            ),
            Direction::ToClient => (
                &self.counters.read_from_target,
                &self.counters.written_to_clients,
            ),
        }
    }
}

/// A running fault proxy. Dropping it stops accepting and cuts every connection;
/// [`shutdown`](Self::shutdown) also waits for its tasks.
#[derive(Debug)]
pub struct FaultProxy {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    addr: SocketAddr,
}

impl FaultProxy {
    /// Starts a proxy to `target` on `127.0.0.1:0` with the default limits.
    ///
    /// # Errors
    /// [`ProxyError::Bind`] when no loopback port can be bound.
    pub async fn start(target: SocketAddr) -> Result<Self, ProxyError> {
        Self::start_with(target, ProxyConfig::default()).await
    }

    /// Starts a proxy to `target` on `127.0.0.1:0`.
    ///
    /// # Errors
    /// [`ProxyError::Config`] for zero sizes, [`ProxyError::Bind`] when no port can be bound.
    pub async fn start_with(target: SocketAddr, config: ProxyConfig) -> Result<Self, ProxyError> {
        if config.chunk_size == 0 || config.queue_chunks == 0 || config.max_connections == 0 {
            return Err(ProxyError::Config(
                "chunk size, queue length and connection cap must be at least 1",
            ));
        }
        let bind = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| ProxyError::Bind { addr: bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ProxyError::Bind { addr: bind, source })?;
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                target,
                fault: Fault::Pass,
                refusing: Refusing::No,
                conns: HashMap::new(),
                next_id: 0,
                rules: Vec::new(),
                next_rule: 0,
            }),
            counters: Counters::default(),
            open: watch::Sender::new(0),
            root: CancellationToken::new(),
        });
        let tasks = TaskTracker::new();
        tasks.spawn(accept_loop(listener, shared.clone(), tasks.clone()));
        debug!(%addr, %target, "fault proxy listening");
        Ok(Self {
            shared,
            tasks,
            addr,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections are forwarded.
    pub fn target(&self) -> SocketAddr {
        self.shared.lock().target
    }

    /// Forwards new connections to `target` from now on (open ones keep theirs).
    pub fn set_target(&self, target: SocketAddr) {
        self.shared.lock().target = target;
    }

    /// The global fault.
    pub fn fault(&self) -> Fault {
        self.shared.lock().fault
    }

    /// Sets the global fault, for every connection without one of its own, from the next chunk.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.lock().fault = fault;
    }

    /// Gives one connection its own fault (`None`: follow the global one again). Returns
    /// `false` when the connection is gone.
    pub fn set_connection_fault(&self, id: ConnectionId, fault: Option<Fault>) -> bool {
        match self.shared.lock().conns.get_mut(&id) {
            Some(conn) => {
                conn.fault = fault;
                true
            }
            None => false,
        }
    }

    /// The open connections, oldest first.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let state = self.shared.lock();
        let mut list: Vec<ConnectionInfo> = state
            .conns
            .iter()
            .map(|(id, conn)| ConnectionInfo {
                id: *id,
                peer: conn.peer,
                fault: conn.fault,
                preamble: conn.preamble.clone(),
            })
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }

    /// Cuts one connection (both sides reset). Returns `false` when it was already gone.
    pub fn cut_connection(&self, id: ConnectionId) -> bool {
        self.shared.cut(|candidate, _| candidate == id) == 1
    }

    /// Cuts the connections whose snapshot `pick` selects; returns how many.
    pub fn cut_where(&self, mut pick: impl FnMut(&ConnectionInfo) -> bool) -> usize {
        self.shared.cut(|id, conn| {
            pick(&ConnectionInfo {
                id,
                peer: conn.peer,
                fault: conn.fault,
                preamble: conn.preamble.clone(),
            })
        })
    }

    /// Cuts every open connection; returns how many.
    pub fn cut_all(&self) -> usize {
        self.shared.cut(|_, _| true)
    }

    /// Refuses new connections for `period` (tokio time), then cuts every open one: clients
    /// that reconnect at once are refused until the period ends.
    pub fn cut_all_and_refuse_for(&self, period: Duration) -> usize {
        self.refuse_for(period);
        self.cut_all()
    }

    /// Adds a rule: every connection whose preamble (the client's first bytes) satisfies
    /// `matches` — open ones now, new ones as their bytes arrive — gets `action`. Rules are
    /// tried in the order they were added; the first match wins. A cut by rule happens before
    /// the matching bytes are forwarded. A rule acts once per connection: a connection whose
    /// fault a rule set can be given another one by hand afterwards.
    pub fn add_rule(
        &self,
        matches: impl Fn(&[u8]) -> bool + Send + Sync + 'static,
        action: RuleAction,
    ) -> RuleId {
        let matches: Matcher = Arc::new(matches);
        let mut state = self.shared.lock();
        state.next_rule += 1;
        let id = RuleId(state.next_rule);
        state.rules.push(Rule {
            id,
            matches: matches.clone(),
            action,
        });
        match action {
            RuleAction::Fault(fault) => {
                for conn in state.conns.values_mut() {
                    if !conn.ruled && matches(&conn.preamble) {
                        conn.fault = Some(fault);
                        conn.ruled = true;
                    }
                }
            }
            RuleAction::Cut => {
                drop(state);
                self.shared.cut(|_, conn| matches(&conn.preamble));
            }
        }
        id
    }

    /// Removes a rule (connections it already cut or faulted stay so). Returns `false` when
    /// there was no such rule.
    pub fn remove_rule(&self, id: RuleId) -> bool {
        let mut state = self.shared.lock();
        let before = state.rules.len();
        state.rules.retain(|rule| rule.id != id);
        state.rules.len() != before
    }

    /// Refuses new connections for `period` (tokio time); open ones are not touched.
    pub fn refuse_for(&self, period: Duration) {
        self.shared.lock().refusing = Refusing::Until(Instant::now() + period);
    }

    /// Refuses new connections until [`accept_new`](Self::accept_new).
    pub fn refuse_new(&self) {
        self.shared.lock().refusing = Refusing::Indefinitely;
    }

    /// Accepts new connections again.
    pub fn accept_new(&self) {
        self.shared.lock().refusing = Refusing::No;
    }

    /// The counters.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            accepted: load(&c.accepted),
            refused: load(&c.refused),
            upstream_failures: load(&c.upstream_failures),
            cut: load(&c.cut),
            open: *self.shared.open.borrow() as u64,
            read_from_clients: load(&c.read_from_clients),
            written_to_target: load(&c.written_to_target),
            read_from_target: load(&c.read_from_target),
            written_to_clients: load(&c.written_to_clients),
            dropped: load(&c.dropped),
        }
    }

    /// Waits until the number of open connections satisfies `pred` (checked at once, then on
    /// every change).
    pub async fn wait_for_open(&self, pred: impl FnMut(&usize) -> bool) {
        let mut rx = self.shared.open.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(pred).await;
    }

    /// Stops accepting, cuts every connection and waits for the proxy's tasks.
    pub async fn shutdown(self) {
        self.shared.root.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.root.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tasks: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            () = shared.root.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (client, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off a little instead of spinning.
                warn!(error = %err, "fault proxy accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        match shared.admit(peer) {
            None => {
                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                reset(&client);
                debug!(%peer, "fault proxy refused a connection");
            }
            Some((id, target, cancel)) => {
                shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(serve(shared.clone(), id, client, target, cancel));
            }
        }
    }
}

/// Makes the close of `stream` a reset rather than an orderly FIN, as a cut link looks.
fn reset(stream: &TcpStream) {
    if let Err(err) = stream.set_zero_linger() {
        debug!(error = %err, "cannot set SO_LINGER=0; closing normally");
    }
}

async fn serve(
    shared: Arc<Shared>,
    id: ConnectionId,
    mut client: TcpStream,
    target: SocketAddr,
    cancel: CancellationToken,
) {
    let connect = tokio::time::timeout(shared.config.connect_timeout, TcpStream::connect(target));
    let upstream = tokio::select! {
        () = cancel.cancelled() => None,
        upstream = connect => match upstream {
            Ok(Ok(upstream)) => Some(upstream),
            Ok(Err(err)) => {
                debug!(%id, %target, error = %err, "fault proxy cannot reach its target");
                None
            }
            Err(_) => {
                debug!(%id, %target, "fault proxy timed out connecting to its target");
                None
            }
        },
    };
    let Some(mut upstream) = upstream else {
        if !cancel.is_cancelled() {
            shared
                .counters
                .upstream_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        reset(&client);
        shared.remove(id);
        return;
    };
    // Small protocol packets (MQTT, HTTP) should not wait for Nagle.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let outcome = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let to_target = pump(
            &shared,
            id,
            Direction::ToTarget,
            client_read,
            upstream_write,
        );
        let to_client = pump(
            &shared,
            id,
            Direction::ToClient,
            upstream_read,
            client_write,
        );
        tokio::select! {
            () = cancel.cancelled() => None,
            done = async { tokio::try_join!(to_target, to_client) } => Some(done),
        }
    };
    match outcome {
        None => {
            reset(&client);
            reset(&upstream);
            debug!(%id, "fault proxy cut a connection");
        }
        Some(Ok(_)) => debug!(%id, "proxied connection closed"),
        Some(Err(err)) => {
            // One side failed: the other learns by a reset, as through a real broken path.
            reset(&client);
            reset(&upstream);
            debug!(%id, error = %err, "proxied connection failed");
        }
    }
    shared.remove(id);
}

/// Copies one direction of a connection, applying the current fault to each chunk, through a
/// bounded queue so that a delay holds bytes without stopping the reading of later ones.
async fn pump(
    shared: &Shared,
    id: ConnectionId,
    direction: Direction,
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(shared.config.queue_chunks);
    let read = async move {
        let mut buf = vec![0u8; shared.config.chunk_size];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                // Dropping `tx` tells the writer to finish the queue and half-close.
                return Ok::<(), io::Error>(());
            }
            let chunk = &buf[..n];
            let fault = match shared.on_chunk(id, direction, chunk) {
                Verdict::Apply(fault) => fault,
                Verdict::Cut => {
                    // The cancellation token is already cancelled; this just ends the pump.
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "cut by rule",
                    ));
                }
            };
            let due = match fault {
                Fault::Drop => {
                    shared
                        .counters
                        .dropped
                        .fetch_add(n as u64, Ordering::Relaxed);
                    continue;
                }
                Fault::Pass => Instant::now(),
                Fault::Delay(delay) => Instant::now() + delay,
            };
            if tx.send((due, chunk.to_vec())).await.is_err() {
                // The writer failed; its error ends the connection.
                return Ok(());
            }
        }
    };
    let write = async move {
        let (_, written) = shared.byte_counters(direction);
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            writer.write_all(&chunk).await?;
            written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        writer.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}
