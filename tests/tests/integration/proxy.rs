//! The fault proxy, mode by mode, with real sockets on loopback: an echo server behind it, or a
//! listener the test accepts from itself so it holds both ends of the proxied connection.
//!
//! No timing asserts: delays are checked as lower bounds in paused tokio time, everything else by
//! causality (what arrives, in which order, and what never does). Real-time timeouts only guard
//! against hangs.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use casement_tests::proxy::{Fault, FaultProxy, ProxyConfig, RuleAction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A hang guard, not a timing assert: every awaited step is local and finishes in microseconds.
const GUARD: Duration = Duration::from_secs(30);
/// The same in paused time, where the clock leaps to the next timer whenever the runtime idles
/// (so a stream of delayed chunks can take many delays of virtual time).
const PAUSED_GUARD: Duration = Duration::from_secs(7 * 24 * 3600);

/// The guard for the current runtime: paused tests set `PAUSED` first.
fn guard() -> Duration {
    if PAUSED.with(|p| p.get()) {
        PAUSED_GUARD
    } else {
        GUARD
    }
}

thread_local! {
    static PAUSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// An echo server on `127.0.0.1:0`.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

/// Connects through the proxy and accepts the far end: (client side, server side).
async fn pair(proxy: &FaultProxy, server: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(proxy.addr()).await.expect("connect");
    let (far, _) = tokio::time::timeout(guard(), server.accept())
        .await
        .expect("the proxy connects to the target")
        .expect("accept");
    (client, far)
}

async fn read_exact(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(guard(), stream.read_exact(&mut buf))
        .await
        .expect("data arrives")
        .expect("read");
    buf
}

async fn round_trip(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    stream.write_all(data).await.expect("write");
    read_exact(stream, data.len()).await
}

/// True when the stream was closed or reset (and nothing else arrived first).
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(guard(), stream.read(&mut buf)).await {
        Ok(Ok(0)) => true,
        Ok(Err(e)) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
        ),
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Polls the counters until `pred` holds (each step is local I/O, so this ends quickly).
async fn wait_stats(proxy: &FaultProxy, pred: impl Fn(&casement_tests::proxy::ProxyStats) -> bool) {
    tokio::time::timeout(guard(), async {
        while !pred(&proxy.stats()) {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("counters never got there: {:?}", proxy.stats()));
}

#[tokio::test]
async fn pass_forwards_both_ways_and_counts_bytes() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(round_trip(&mut client, b"hello").await, b"hello");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(round_trip(&mut client, &big).await, big);

    let stats = proxy.stats();
    let n = 5 + big.len() as u64;
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.open, 1);
    assert_eq!(stats.read_from_clients, n);
    assert_eq!(stats.written_to_target, n);
    assert_eq!(stats.written_to_clients, n);
    assert_eq!(stats.dropped, 0);
    assert_eq!(stats.in_flight(), 0);

    drop(client);
    proxy.wait_for_open(|n| *n == 0).await;
    proxy.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn delay_holds_every_chunk_in_both_directions_and_keeps_order() {
    PAUSED.with(|p| p.set(true));
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    proxy.set_fault(Fault::Delay(Duration::from_secs(10)));
    let mut client = TcpStream::connect(proxy.addr()).await.expect("connect");

    let start = Instant::now();
    assert_eq!(round_trip(&mut client, b"ping").await, b"ping");
    // Held once on the way in and once on the way back (paused time: a lower bound only).
    assert!(
        start.elapsed() >= Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );

    // Many small writes, each its own chunk at best: all of them come back, in order.
    let mut expected = Vec::new();
    for i in 0..200 {
        let line = format!("message {i}\n");
        client.write_all(line.as_bytes()).await.expect("write");
        expected.extend_from_slice(line.as_bytes());
    }
    assert_eq!(read_exact(&mut client, expected.len()).await, expected);

    // Back to pass: the delay is gone for the next chunk.
    proxy.set_fault(Fault::Pass);
    assert_eq!(proxy.fault(), Fault::Pass);
    assert_eq!(round_trip(&mut client, b"pong").await, b"pong");
    proxy.shutdown().await;
}

#[tokio::test]
async fn drop_blackholes_both_directions_while_the_connection_stays_open() {
    let (server, target) = listener().await;
    let proxy = FaultProxy::start(target).await.expect("proxy");
    let (mut client, mut far) = pair(&proxy, &server).await;

    proxy.set_fault(Fault::Drop);
    client.write_all(b"lost-up").await.expect("write up");
    far.write_all(b"lost-down").await.expect("write down");
    wait_stats(&proxy, |s| s.dropped == 16).await;
    assert_eq!(
        proxy.stats().open,
        1,
        "a blackhole does not close the connection"
    );

    // Lifting it: only what is sent from now on arrives.
    proxy.set_fault(Fault::Pass);
    client.write_all(b"U").await.expect("write up");
    far.write_all(b"D").await.expect("write down");
    assert_eq!(read_exact(&mut far, 1).await, b"U");
    assert_eq!(read_exact(&mut client, 1).await, b"D");
    let stats = proxy.stats();
    assert_eq!((stats.written_to_target, stats.written_to_clients), (1, 1));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_fault_can_be_set_on_one_connection_only() {
    let (server, target) = listener().await;
    let proxy = FaultProxy::start(target).await.expect("proxy");
    let (mut a, mut a_far) = pair(&proxy, &server).await;
    a.write_all(b"A").await.expect("write");
    assert_eq!(read_exact(&mut a_far, 1).await, b"A");
    let (mut b, mut b_far) = pair(&proxy, &server).await;
    b.write_all(b"B").await.expect("write");
    assert_eq!(read_exact(&mut b_far, 1).await, b"B");

    let conns = proxy.connections();
    assert_eq!(conns.len(), 2);
    let a_id = conns
        .iter()
        .find(|c| c.preamble == b"A")
        .expect("connection A by its preamble")
        .id;
    assert!(proxy.set_connection_fault(a_id, Some(Fault::Drop)));

    a.write_all(b"lost").await.expect("write");
    b.write_all(b"kept").await.expect("write");
    assert_eq!(read_exact(&mut b_far, 4).await, b"kept");
    wait_stats(&proxy, |s| s.dropped == 4).await;

    // Back to the global fault: A flows again, and the dropped bytes never show up.
    assert!(proxy.set_connection_fault(a_id, None));
    a.write_all(b"!").await.expect("write");
    assert_eq!(read_exact(&mut a_far, 1).await, b"!");
    proxy.shutdown().await;
}

#[tokio::test]
async fn cut_resets_both_sides_and_new_connections_still_work() {
    let (server, target) = listener().await;
    let proxy = FaultProxy::start(target).await.expect("proxy");
    let (mut client, mut far) = pair(&proxy, &server).await;

    assert_eq!(proxy.cut_all(), 1);
    assert!(is_closed(&mut client).await, "the client sees the cut");
    assert!(is_closed(&mut far).await, "the server sees the cut");
    assert_eq!(proxy.stats().cut, 1);
    assert!(proxy.connections().is_empty());

    let (mut client, mut far) = pair(&proxy, &server).await;
    client.write_all(b"again").await.expect("write");
    assert_eq!(read_exact(&mut far, 5).await, b"again");
    proxy.shutdown().await;
}

#[tokio::test]
async fn cut_where_picks_connections_by_their_preamble() {
    let (server, target) = listener().await;
    let proxy = FaultProxy::start(target).await.expect("proxy");
    let (mut dev1, mut dev1_far) = pair(&proxy, &server).await;
    let (mut dev2, mut dev2_far) = pair(&proxy, &server).await;
    dev1.write_all(b"CONNECT dev1").await.expect("write");
    dev2.write_all(b"CONNECT dev2").await.expect("write");
    read_exact(&mut dev1_far, 12).await;
    read_exact(&mut dev2_far, 12).await;

    assert_eq!(proxy.cut_where(|c| c.preamble.ends_with(b"dev1")), 1);
    assert!(is_closed(&mut dev1).await);
    dev2.write_all(b"+").await.expect("write");
    assert_eq!(read_exact(&mut dev2_far, 1).await, b"+");

    let left = proxy.connections();
    assert_eq!(left.len(), 1);
    assert!(proxy.cut_connection(left[0].id));
    assert!(!proxy.cut_connection(left[0].id), "already gone");
    assert!(is_closed(&mut dev2).await);
    proxy.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn cut_and_refuse_keeps_clients_out_for_the_period() {
    PAUSED.with(|p| p.set(true));
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let mut before = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(round_trip(&mut before, b"x").await, b"x");

    assert_eq!(proxy.cut_all_and_refuse_for(Duration::from_secs(30)), 1);
    assert!(is_closed(&mut before).await);

    // The address stays bound: TCP connects, then the proxy resets it at once.
    let mut refused = TcpStream::connect(proxy.addr())
        .await
        .expect("listener stays bound");
    let _ = refused.write_all(b"y").await;
    assert!(is_closed(&mut refused).await);
    assert_eq!(proxy.stats().refused, 1);

    tokio::time::advance(Duration::from_secs(31)).await;
    let mut after = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(round_trip(&mut after, b"z").await, b"z");

    // Refusing without a period lasts until told otherwise.
    proxy.refuse_new();
    tokio::time::advance(Duration::from_secs(3600)).await;
    let mut refused = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert!(is_closed(&mut refused).await);
    // ...and leaves open connections alone.
    assert_eq!(round_trip(&mut after, b"still").await, b"still");
    proxy.accept_new();
    let mut again = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(round_trip(&mut again, b"ok").await, b"ok");
    assert_eq!(proxy.stats().refused, 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn set_target_moves_new_connections_and_an_unreachable_target_resets_the_client() {
    let (old_server, old_target) = listener().await;
    let proxy = FaultProxy::start(old_target).await.expect("proxy");
    let (mut old_client, mut old_far) = pair(&proxy, &old_server).await;

    // The target goes away (a hub stopping): new clients are reset, not left hanging.
    let (gone, gone_addr) = listener().await;
    drop(gone);
    proxy.set_target(gone_addr);
    assert_eq!(proxy.target(), gone_addr);
    let mut orphan = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert!(is_closed(&mut orphan).await);
    wait_stats(&proxy, |s| s.upstream_failures == 1).await;

    // It comes back elsewhere (a hub restarted on a new port): same proxy address.
    let (new_server, new_target) = listener().await;
    proxy.set_target(new_target);
    let (mut new_client, mut new_far) = pair(&proxy, &new_server).await;
    new_client.write_all(b"new").await.expect("write");
    assert_eq!(read_exact(&mut new_far, 3).await, b"new");
    // The connection made before keeps its target.
    old_client.write_all(b"old").await.expect("write");
    assert_eq!(read_exact(&mut old_far, 3).await, b"old");
    proxy.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_refused() {
    let config = ProxyConfig {
        max_connections: 1,
        ..ProxyConfig::default()
    };
    let proxy = FaultProxy::start_with(echo_server().await, config)
        .await
        .expect("proxy");
    let mut first = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(round_trip(&mut first, b"1").await, b"1");
    let mut second = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert!(is_closed(&mut second).await);
    assert_eq!(proxy.stats().refused, 1);

    drop(first);
    proxy.wait_for_open(|n| *n == 0).await;
    let mut third = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(round_trip(&mut third, b"3").await, b"3");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_does_not_read_stalls_the_sender_instead_of_filling_memory() {
    // The target accepts and never reads.
    let (server, target) = listener().await;
    let config = ProxyConfig::default();
    let bound = config.max_buffered_per_direction() as u64;
    let proxy = FaultProxy::start_with(target, config).await.expect("proxy");
    let (client, _far) = pair(&proxy, &server).await;

    let total = 64 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        let mut client = client;
        let data = vec![7u8; total];
        client.write_all(&data).await
    });
    // Sample while the writer pushes: the proxy never holds more than its queue. (An unbounded
    // proxy would read everything at once and hold tens of MiB here.)
    let mut last = 0;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let stats = proxy.stats();
        assert!(
            stats.in_flight() <= bound,
            "{} bytes held, bound {bound}",
            stats.in_flight()
        );
        last = stats.read_from_clients;
    }
    assert!(
        !writer.is_finished(),
        "64 MiB went into a peer that never reads ({last} read by the proxy)"
    );
    assert!((last as usize) < total);
    writer.abort();
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_the_listener() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let addr = proxy.addr();
    let mut client = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(round_trip(&mut client, b"x").await, b"x");
    proxy.shutdown().await;
    assert!(is_closed(&mut client).await);
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "nothing listens after shutdown");
}

#[tokio::test]
async fn zero_sizes_are_rejected() {
    let config = ProxyConfig {
        queue_chunks: 0,
        ..ProxyConfig::default()
    };
    let err = FaultProxy::start_with(echo_server().await, config)
        .await
        .expect_err("invalid");
    assert!(err.to_string().contains("queue"), "{err}");
}

#[tokio::test]
async fn a_cut_rule_keeps_one_client_out_until_removed() {
    let (server, target) = listener().await;
    let proxy = FaultProxy::start(target).await.expect("proxy");
    let (mut dev1, mut dev1_far) = pair(&proxy, &server).await;
    dev1.write_all(b"CONNECT dev1").await.expect("write");
    read_exact(&mut dev1_far, 12).await;

    // Adding the rule cuts the open connection that matches...
    let rule = proxy.add_rule(|p| p.starts_with(b"CONNECT dev1"), RuleAction::Cut);
    assert!(is_closed(&mut dev1).await);

    // ...and every new one as soon as its first bytes say who it is, before they are forwarded.
    let (mut again, mut again_far) = pair(&proxy, &server).await;
    again.write_all(b"CONNECT dev1").await.expect("write");
    assert!(is_closed(&mut again).await);
    let mut buf = Vec::new();
    let read = tokio::time::timeout(GUARD, again_far.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "the server saw {buf:?} ({read:?})");

    // Others pass.
    let (mut dev2, mut dev2_far) = pair(&proxy, &server).await;
    dev2.write_all(b"CONNECT dev2").await.expect("write");
    assert_eq!(read_exact(&mut dev2_far, 12).await, b"CONNECT dev2");

    assert!(proxy.remove_rule(rule));
    assert!(!proxy.remove_rule(rule));
    let (mut back, mut back_far) = pair(&proxy, &server).await;
    back.write_all(b"CONNECT dev1").await.expect("write");
    assert_eq!(read_exact(&mut back_far, 12).await, b"CONNECT dev1");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_fault_rule_applies_to_matching_connections_only() {
    let (server, target) = listener().await;
    let proxy = FaultProxy::start(target).await.expect("proxy");
    proxy.add_rule(|p| p.starts_with(b"slow"), RuleAction::Fault(Fault::Drop));

    let (mut slow, mut slow_far) = pair(&proxy, &server).await;
    let (mut fast, mut fast_far) = pair(&proxy, &server).await;
    slow.write_all(b"slow hello").await.expect("write");
    fast.write_all(b"fast hello").await.expect("write");
    assert_eq!(read_exact(&mut fast_far, 10).await, b"fast hello");
    wait_stats(&proxy, |s| s.dropped == 10).await;
    slow_far.write_all(b"down").await.expect("write");
    wait_stats(&proxy, |s| s.dropped == 14).await;
    let slow_info = proxy
        .connections()
        .into_iter()
        .find(|c| c.preamble.starts_with(b"slow"))
        .expect("still open");
    assert_eq!(slow_info.fault, Some(Fault::Drop));
    // Clearing its own fault lets it through again.
    proxy.set_connection_fault(slow_info.id, None);
    slow.write_all(b"!").await.expect("write");
    assert_eq!(read_exact(&mut slow_far, 1).await, b"!");
    drop(fast);
    proxy.shutdown().await;
}
