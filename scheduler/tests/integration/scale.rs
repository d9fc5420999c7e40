//! The run loop at fleet scale (issue 10): a pass costs what it can act on, not what the fleet
//! holds; the invariants hold when twin queries lag and when the hub answers 429.
//!
//! The real hub in-process, simulated agents over MQTT, the real scheduler — one driven clock.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use casement_client::{ClientError, HubApi, ServiceClient};
use casement_iothub::error::ServiceError;
use casement_iothub::rest::{MethodRequest, MethodResponse, Twin, TwinPatch};
use casement_scheduler::run::Scheduler;
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::UTC;
use serde_json::Value;

const REBOOT: Duration = Duration::from_secs(90);

/// How late each device reports its window (its `report_jitter` share; none by default).
type Delay<'a> = &'a dyn Fn(&str) -> TimeDelta;

/// No report delay.
fn on_time(_: &str) -> TimeDelta {
    TimeDelta::zero()
}

/// Waits, by twin GETs (strongly consistent, unlike queries when the hub lags), until every
/// simulated device that is up reports the window its clock gave `delay` ago, and every device
/// that rebooted more than `REBOOT` ago reports the reboot completed.
async fn settle_by_twins(env: &Env, spec: &casement_policy::WindowSpec, delay: Delay<'_>) {
    let now = env.clock.now();
    let records = env.reboots();
    let reboot = TimeDelta::from_std(REBOOT).unwrap();
    for d in env.sim().devices().to_vec() {
        let mine: Vec<_> = records.iter().filter(|r| r.device == d.id).collect();
        if mine.iter().any(|r| r.at + reboot > now) {
            continue;
        }
        let last = mine.last().map(|r| r.occurrence);
        let expected_open = spec
            .window_at(d.zone, now + d.skew - delay(&d.id))
            .is_some_and(|s| s.open);
        env.eventually(&format!("{} settled", d.id), || {
            let id = d.id.clone();
            async move {
                let v = env.view(&id).await;
                let window_ok = v
                    .reported()
                    .and_then(|r| r.window)
                    .is_some_and(|w| w.open == expected_open);
                let reboot_ok = match last {
                    None => true,
                    Some(occurrence) => v.reboot().is_some_and(|rb| {
                        rb.status == casement_policy::RebootStatus::Completed
                            && rb.occurrence == occurrence
                    }),
                };
                v.connected == Some(true) && window_ok && reboot_ok
            }
        })
        .await;
    }
}

/// One pass: settled devices, the pass, its calls awaited and the reboots they started seen.
/// Returns the query pages and items the hub answered during the pass alone.
async fn one_pass<H: HubApi + Clone>(
    env: &Env,
    scheduler: &mut Scheduler<H>,
    spec: &casement_policy::WindowSpec,
    delay: Delay<'_>,
) -> (u64, u64) {
    settle_by_twins(env, spec, delay).await;
    let before = env.reboots().len();
    let accepted = scheduler.stats().accepted;
    let stats = env.hub.stats();
    scheduler.pass().await.unwrap();
    let after = env.hub.stats();
    scheduler.settle().await.unwrap();
    let started = usize::try_from(scheduler.stats().accepted - accepted).unwrap();
    env.wait_reboots(before + started).await;
    (
        after.query_pages - stats.query_pages,
        after.query_items - stats.query_items,
    )
}

/// Drives passes every `step` from `from` until every device rebooted once (or `until`).
async fn wave<H: HubApi + Clone>(
    env: &Env,
    scheduler: &mut Scheduler<H>,
    spec: &casement_policy::WindowSpec,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    step: TimeDelta,
    delay: Delay<'_>,
) -> Vec<(u64, u64)> {
    let n = env.sim().devices().len();
    let mut passes = Vec::new();
    env.clock.set(from);
    while env.clock.now() < until {
        passes.push(one_pass(env, scheduler, spec, delay).await);
        if env.reboots().len() >= n && scheduler.rollout("weekly").unwrap().in_flight_count() == 0 {
            break;
        }
        env.clock.set(env.clock.now() + step);
    }
    passes
}

/// Invariants 1–3 over the ground truth, and 4: each of the `n` devices rebooted once.
fn every_device_rebooted_once(env: &Env, n: usize) -> Vec<casement_agent::SimulatedReboot> {
    let records = env.reboots();
    env.check_invariants("weekly", TimeDelta::zero());
    assert_eq!(records.len(), n, "invariant 4: every device rebooted once");
    records
}

/// `n` UTC devices under a policy of `max_concurrent`, the scheduler started, before the window.
async fn fleet(
    n: usize,
    max_concurrent: u32,
    configure: impl FnOnce(casement_hub::HubConfig) -> casement_hub::HubConfig,
) -> (Env, casement_policy::WindowSpec) {
    fleet_with(n, max_concurrent, configure, |_| {}).await
}

/// As [`fleet`], with `simulation` adjusting the simulated agents.
async fn fleet_with(
    n: usize,
    max_concurrent: u32,
    configure: impl FnOnce(casement_hub::HubConfig) -> casement_hub::HubConfig,
    simulation: impl FnOnce(&mut casement_agent::SimulationConfig),
) -> (Env, casement_policy::WindowSpec) {
    let mut env = Env::start_with(crate::common::utc(2026, 3, 28, 12, 0, 0), configure).await;
    env.write_policy(
        "weekly.toml",
        &PolicyFile {
            max_concurrent,
            max_per_minute: 1000,
            max_failures: "50%",
            ..PolicyFile::default()
        },
    );
    // Time runs on (Saturday afternoon, far from the window) while the devices register, so a
    // hub whose queries lag sees them in its queries too.
    let clock = env.clock.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            clock.set(clock.now() + TimeDelta::seconds(5));
        }
    });
    env.simulate_with(n, &[UTC], REBOOT, TimeDelta::zero(), simulation)
        .await;
    ticker.abort();
    let spec = env.load_policies().get("weekly").unwrap().window().clone();
    (env, spec)
}

/// The first passes of a wave over `n` in-window devices, `max_concurrent` 4: the pages and
/// items each pass read.
async fn first_passes(n: usize) -> Vec<(u64, u64)> {
    let (env, spec) = fleet(n, 4, |c| c).await;
    let mut scheduler = env.scheduler(env.client.clone()).await;
    env.wait_applied("weekly").await;
    // Three passes 120 s apart: each sees the last one's reboots completed (k due = n - done).
    let passes = wave(
        &env,
        &mut scheduler,
        &spec,
        crate::common::utc(2026, 3, 29, 2, 0, 10),
        crate::common::utc(2026, 3, 29, 2, 4, 30),
        TimeDelta::seconds(120),
        &on_time,
    )
    .await;
    assert_eq!(env.reboots().len(), 12, "4 reboots a pass");
    passes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_reads_what_it_can_start_not_the_fleet_at_two_fleet_sizes() {
    for n in [25, 250] {
        let passes = first_passes(n).await;
        assert_eq!(passes.len(), 3, "n = {n}: {passes:?}");
        assert_eq!(passes[0].0, 1, "the first pass queries: {passes:?}");
        for (pages, items) in &passes {
            // TOP k with k = 4 free slots (+ the 4 just completed, which a lagging query may
            // still show), rounded up to the page the hub meters anyway: one page, at most
            // 100 items — at 25 devices as at 250. A `SELECT *` of every open window reads
            // ceil(n / 100) pages of n items.
            // A pass whose free slots the queued devices of an earlier page fill queries
            // nothing.
            assert!(*pages <= 1, "n = {n}: {passes:?}");
            assert!(*items <= 100, "n = {n}: {passes:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invariants_hold_when_queries_lag_30s_across_a_scheduler_restart() {
    let (env, spec) = fleet(12, 3, |mut c| {
        c.query_lag = Duration::from_secs(30);
        c
    })
    .await;
    let mut scheduler = env.scheduler(env.client.clone()).await;
    // The applied policy shows in queries 30 s late: wait by twin GETs, then let it age.
    env.eventually("every device applied the policy", || async {
        let mut all = true;
        for d in env.sim().devices() {
            all &= env.view(&d.id).await.reported().is_some_and(|r| {
                r.policy == "weekly" && r.status == casement_policy::MaintenanceStatus::Applied
            });
        }
        all
    })
    .await;
    let step = TimeDelta::seconds(20);
    let first = wave(
        &env,
        &mut scheduler,
        &spec,
        crate::common::utc(2026, 3, 29, 2, 0, 10),
        crate::common::utc(2026, 3, 29, 2, 3, 0),
        step,
        &on_time,
    )
    .await;
    assert!(!first.is_empty());
    let done_before_restart = env.reboots().len();
    assert!(
        done_before_restart > 0 && done_before_restart < 12,
        "{done_before_restart}"
    );
    // A restart mid-window, some devices still rebooting: the new scheduler reads the journal,
    // follows those by twin reads, and a stale query showing them due changes nothing.
    drop(scheduler);
    let mut scheduler = env.scheduler(env.client.clone()).await;
    wave(
        &env,
        &mut scheduler,
        &spec,
        env.clock.now() + step,
        crate::common::utc(2026, 3, 29, 3, 30, 0),
        step,
        &on_time,
    )
    .await;
    every_device_rebooted_once(&env, 12);
    let journal = scheduler.journal().entries(Some("weekly")).unwrap();
    assert_eq!(journal.len(), 12);
    assert!(
        journal
            .iter()
            .all(|e| e.state == casement_scheduler::rollout::EntryState::Completed),
        "{journal:#?}"
    );
}

/// The real client, with every third call to the hub answered 429 before it is made.
#[derive(Clone)]
struct EveryThird {
    inner: ServiceClient,
    calls: Arc<AtomicUsize>,
    throttled: Arc<AtomicUsize>,
}

impl EveryThird {
    fn throttle(&self, op: &str) -> Option<ClientError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
            self.throttled.fetch_add(1, Ordering::SeqCst);
            Some(ClientError::Service {
                op: op.to_owned(),
                error: ServiceError::parse(429, Some("ThrottlingException"), b""),
            })
        } else {
            None
        }
    }
}

impl HubApi for EveryThird {
    fn query(&self, sql: &str) -> impl Future<Output = Result<Vec<Value>, ClientError>> + Send {
        let refused = self.throttle("query");
        let inner = self.inner.clone();
        let sql = sql.to_owned();
        async move {
            match refused {
                Some(e) => Err(e),
                None => inner.query_all(&sql).await,
            }
        }
    }
    fn get_twin(&self, device: &str) -> impl Future<Output = Result<Twin, ClientError>> + Send {
        let refused = self.throttle("GET twin");
        let inner = self.inner.clone();
        let device = device.to_owned();
        async move {
            match refused {
                Some(e) => Err(e),
                None => inner.twin(&device).await,
            }
        }
    }
    fn patch_twin(
        &self,
        device: &str,
        patch: &TwinPatch,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Twin, ClientError>> + Send {
        // Applying the policy is not what this test is about.
        self.inner.patch(device, patch, etag)
    }
    fn invoke_method(
        &self,
        device: &str,
        request: &MethodRequest,
    ) -> impl Future<Output = Result<MethodResponse, ClientError>> + Send {
        let refused = self.throttle("POST method");
        let inner = self.inner.clone();
        let device = device.to_owned();
        let request = request.clone();
        async move {
            match refused {
                Some(e) => Err(e),
                None => inner.invoke(&device, &request).await,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_answering_429_to_every_third_call_gets_the_wave_done_without_a_double_reboot() {
    let (env, spec) = fleet(10, 3, |c| c).await;
    let hub = EveryThird {
        inner: env.client.clone(),
        calls: Arc::new(AtomicUsize::new(0)),
        throttled: Arc::new(AtomicUsize::new(0)),
    };
    // The policy applied first through the real client (applying is not what this is about).
    let applier = env.scheduler(env.client.clone()).await;
    env.wait_applied("weekly").await;
    drop(applier);
    let mut scheduler = env.scheduler(hub.clone()).await;
    wave(
        &env,
        &mut scheduler,
        &spec,
        crate::common::utc(2026, 3, 29, 2, 0, 10),
        crate::common::utc(2026, 3, 29, 3, 30, 0),
        TimeDelta::seconds(30),
        &on_time,
    )
    .await;
    assert!(hub.throttled.load(Ordering::SeqCst) > 0);
    let records = env.reboots();
    env.check_invariants("weekly", TimeDelta::zero());
    assert_eq!(records.len(), 10, "every device rebooted once");
    let stats = scheduler.stats();
    assert!(stats.throttled > 0, "{stats:?}");
    assert_eq!(stats.failed, 0, "a 429 is no failure: {stats:?}");
    assert_eq!(stats.completed, 10, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_shapes_rather_than_refuses_slows_the_wave_but_keeps_it_correct() {
    let (env, spec) = fleet(8, 4, |mut c| {
        c.throttle_mode = casement_hub::ThrottleMode::Shape;
        c.throttle = casement_hub::ThrottleConfig {
            rates: [
                // Four reboots at once against two a second: two wait in the queue.
                (
                    casement_hub::Operation::Methods,
                    casement_hub::Rate::per_second(2.0),
                ),
                (
                    casement_hub::Operation::TwinReads,
                    casement_hub::Rate::per_second(4.0),
                ),
                (
                    casement_hub::Operation::Queries,
                    casement_hub::Rate::per_second(4.0),
                ),
            ]
            .into_iter()
            .collect(),
        };
        c
    })
    .await;
    let mut scheduler = env.scheduler(env.client.clone()).await;
    env.wait_applied("weekly").await;
    wave(
        &env,
        &mut scheduler,
        &spec,
        crate::common::utc(2026, 3, 29, 2, 0, 10),
        crate::common::utc(2026, 3, 29, 3, 30, 0),
        TimeDelta::seconds(120),
        &on_time,
    )
    .await;
    assert!(
        env.hub.throttle_counts().queued > 0,
        "the hub never shaped a call"
    );
    let records = env.reboots();
    env.check_invariants("weekly", TimeDelta::zero());
    assert_eq!(records.len(), 8, "every device rebooted once");
    let stats = scheduler.stats();
    assert_eq!((stats.failed, stats.completed), (0, 8), "{stats:?}");
}

/// Issue 10, the devices' own traffic: with the agents' report jitter on (60 s), devices whose
/// windows open together report themselves due over the first minute, each at its own delay;
/// the scheduler invokes none before its report and still reboots every one, once, inside its
/// window, within `max_concurrent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_agents_report_jitter_on_every_device_is_rebooted_inside_its_window() {
    let jitter = Duration::from_secs(60);
    let (env, spec) = fleet_with(12, 3, |c| c, |sim| sim.report_jitter = jitter).await;
    let policy = env.load_policies().get("weekly").unwrap().clone();
    let plan = casement_policy::MaintenancePlan {
        policy: "weekly".into(),
        revision: policy.revision().as_str().to_owned(),
        window: spec.clone(),
        expected_duration: policy.reboot().expected_duration,
    };
    let delay = |id: &str| TimeDelta::from_std(plan.report_delay(id, jitter)).unwrap();
    let ids: Vec<String> = env.sim().devices().iter().map(|d| d.id.clone()).collect();
    let late = ids
        .iter()
        .filter(|id| delay(id) > TimeDelta::seconds(5))
        .count();
    assert!(late >= 6, "most of the fleet reports after the first pass");
    let mut scheduler = env.scheduler(env.client.clone()).await;
    env.wait_applied("weekly").await;
    let opens = crate::common::utc(2026, 3, 29, 2, 0, 0);
    wave(
        &env,
        &mut scheduler,
        &spec,
        opens + TimeDelta::seconds(5),
        crate::common::utc(2026, 3, 29, 3, 30, 0),
        TimeDelta::seconds(10),
        &delay,
    )
    .await;
    let records = every_device_rebooted_once(&env, 12);
    for r in &records {
        assert!(
            r.at >= opens + delay(&r.device),
            "{} rebooted at {} before it reported itself due ({} after the opening)",
            r.device,
            r.at,
            delay(&r.device)
        );
    }
}
