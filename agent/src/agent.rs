//! The I/O loop: one MQTT session after another, executing what the pure parts decide.
//!
//! [`Agent::run`] loads the durable state, reports what the last run left unsaid (a completed
//! or failed reboot), then connects forever: each session signs a fresh SAS token, CONNECTs
//! with CleanSession=0, subscribes, GETs the twin and then serves desired patches, method
//! requests, window transitions and token renewal until the connection drops (reconnect with
//! backoff), the token is due (clean reconnect at once), the shutdown future resolves, or a
//! simulated reboot cuts the power.
//!
//! rumqttc's event loop runs in its own task per session and forwards events over a bounded
//! channel, so the loop can `select!` on it without cancelling a half-written packet.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use casement_iothub::topic::{
    DESIRED_PATCH_FILTER, DeviceToHub, HubToDevice, METHODS_FILTER, TWIN_RESPONSE_FILTER,
};
use chrono::{DateTime, TimeDelta, Utc};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, QoS};
use rustls::ClientConfig;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::clock::{AgentClock, Wake};
use crate::config::{AgentConfig, RebootCommand, Transport};
use crate::desired::{DesiredState, Notification};
use crate::maintenance::{ApplyOutcome, PolicyState, window_patch};
use crate::mqtt::{ConnectError, mqtt_options, tls_config};
use crate::reboot::{self, Context, MethodResponse, RebootAction, RebootMachine};
use crate::report::{ReportAck, Reporter};
use crate::state::{AgentState, InProgressReboot, StateError, StateStore};
use casement_policy::maintenance::ReportedWindow;

/// How long the agent waits for the "rebooting" report to be acknowledged before it runs the
/// reboot command anyway.
pub const REPORT_BEFORE_REBOOT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the reboot command may run.
pub const REBOOT_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after a successful reboot command the device may still be up before the reboot
/// is reported as failed.
pub const REBOOT_GRACE: TimeDelta = TimeDelta::minutes(10);
/// A session that lasted this long resets the reconnect backoff.
pub const STABLE_SESSION: Duration = Duration::from_secs(30);
/// How long a session waits for CONNACK and for a clean DISCONNECT to go out.
const SESSION_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Events kept for slow [`Agent::events`] subscribers.
const EVENT_CAPACITY: usize = 1024;
/// Capacity of rumqttc's request channel and of the event channel from its task.
const CHANNEL_CAPACITY: usize = 64;

/// Errors that stop the agent (everything else is logged and retried).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The state file cannot be read or the state directory created.
    #[error(transparent)]
    State(#[from] StateError),
    /// The connection cannot even be prepared (CA file, key).
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// What happens when the reboot gate accepts a request.
#[derive(Debug, Clone)]
pub enum RebootHook {
    /// Run this command (argv, no shell) and wait for the power to go.
    Command(RebootCommand),
    /// Simulated device: [`Agent::run`] returns [`RunOutcome::Rebooted`] at once, dropping the
    /// connection without DISCONNECT as a power cut would.
    Simulated,
}

/// Why [`Agent::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The shutdown future resolved.
    Shutdown,
    /// A simulated reboot: the device "lost power" right after starting this reboot.
    Rebooted(InProgressReboot),
}

/// Something the agent did, for tests, the simulator and anyone watching.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// CONNACK received.
    Connected,
    /// The session ended; the agent reconnects (unless it is stopping).
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The twin GET of a session was answered.
    TwinFetched {
        /// The desired `$version` in it.
        desired_version: u64,
    },
    /// A desired notification was dropped because its `$version` is not newer.
    DesiredIgnored {
        /// The notification's version.
        version: u64,
        /// The version the agent already holds.
        current: u64,
    },
    /// The desired policy was applied, rejected or cleared.
    Policy(ApplyOutcome),
    /// The hub acknowledged a reported patch (204).
    Reported(Value),
    /// A direct method was answered.
    MethodAnswered {
        /// The method name.
        name: String,
        /// The status sent.
        status: u16,
        /// The body sent.
        body: Value,
    },
    /// The reboot command started.
    RebootCommandStarted,
    /// The reboot command finished.
    RebootCommandFinished(Result<(), String>),
    /// The SAS token is due; the agent reconnects with a new one.
    TokenRenewal,
    /// The wall clock jumped; windows were re-evaluated.
    ClockJumped(TimeDelta),
    /// The hub throttled (429) or failed (5xx) a twin request; it is sent again after `delay`.
    TwinRetry {
        /// `"twin GET"` or `"reported patch"`.
        request: &'static str,
        /// The status the hub answered.
        status: u16,
        /// How long the agent waits before sending it again.
        delay: Duration,
    },
}

/// One device's agent.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    clock: AgentClock,
    tls: Option<Arc<ClientConfig>>,
    hook: RebootHook,
    boot_id: Option<String>,
    events: broadcast::Sender<AgentEvent>,
    startup_report: Option<Value>,
}

impl Agent {
    /// An agent on the system clock, with TLS trust from `config.ca` (or the system roots) when
    /// the endpoint is TLS, running `config.reboot_command`, with the kernel's boot id.
    pub fn new(config: AgentConfig) -> Result<Self, AgentError> {
        let tls = match config.endpoint.transport {
            Transport::Tls => Some(tls_config(config.ca.as_deref())?),
            Transport::Tcp => None,
        };
        Ok(Self::with_tls_config(config, tls))
    }

    /// Like [`Agent::new`] with a TLS configuration already built (`None` for plain TCP), so
    /// many agents can share one.
    pub fn with_tls_config(config: AgentConfig, tls: Option<Arc<ClientConfig>>) -> Self {
        let hook = RebootHook::Command(config.reboot_command.clone());
        Self {
            config,
            clock: AgentClock::system(),
            tls,
            hook,
            boot_id: read_boot_id(),
            events: broadcast::Sender::new(EVENT_CAPACITY),
            startup_report: None,
        }
    }

    /// Uses another clock (tests, simulated skew).
    pub fn with_clock(mut self, clock: AgentClock) -> Self {
        self.clock = clock;
        self
    }

    /// Uses this reboot hook instead of the configured command.
    pub fn with_reboot_hook(mut self, hook: RebootHook) -> Self {
        self.hook = hook;
        self
    }

    /// Uses this boot id (simulated boots; `None` where the platform has none).
    pub fn with_boot_id(mut self, boot_id: Option<String>) -> Self {
        self.boot_id = boot_id;
        self
    }

    /// Also reports this patch (reported properties) once connected, e.g. that reboots are
    /// simulated ([`crate::try_out`]).
    pub fn with_startup_report(mut self, patch: Value) -> Self {
        self.startup_report = Some(patch);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Subscribes to what the agent does from now on.
    pub fn events(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// Runs until `shutdown` resolves (or, simulated, until the device reboots).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<RunOutcome, AgentError> {
        let store = StateStore::open(&self.config.state_dir)?;
        let state = store.load()?;
        let device = self.config.device_id().to_owned();
        let (policy, restore_error) =
            PolicyState::restore(self.config.timezone, state.policy.as_ref());
        if let Some(err) = restore_error {
            warn!(%device, error = %err, "the persisted policy no longer validates; starting without one");
        }
        let mut core = Core {
            device,
            store,
            state,
            policy,
            reporter: Reporter::new(),
            machine: RebootMachine::new(),
            desired: DesiredState::new(),
            changed_maintenance: false,
            last_window: None,
            rid_prefix: format!("{:08x}", rand::random::<u32>()),
            rid_counter: 0,
            report_retry_at: None,
            report_backoff: Backoff::new(self.config.twin_retry),
            get_backoff: Backoff::new(self.config.twin_retry),
            report_jitter: self.config.report_jitter,
            reboot: RebootStage::None,
            events: self.events.clone(),
            hook: self.hook.clone(),
        };
        let now = self.clock.now();
        let actions = RebootMachine::on_start(&context(
            &core.policy,
            &core.state,
            now,
            self.boot_id.as_deref(),
        ));
        core.execute(actions, None).await;
        if let Some(patch) = &self.startup_report {
            core.reporter.queue(patch.clone());
        }

        let mut clock = self.clock.clone();
        let mut backoff = Backoff::new(self.config.backoff);
        let mut told_untrusted = false;
        tokio::pin!(shutdown);
        loop {
            let end = self.session(&mut core, &mut clock, &mut shutdown).await;
            core.reporter.on_disconnect();
            match end {
                SessionEnd::Shutdown => return Ok(RunOutcome::Shutdown),
                SessionEnd::PoweredOff(reboot) => return Ok(RunOutcome::Rebooted(reboot)),
                SessionEnd::RenewToken => {
                    backoff.reset();
                    continue;
                }
                SessionEnd::Fatal(err) => return Err(err),
                SessionEnd::Lost { reason, stable } => {
                    // Only a connection that held resets the backoff: a hub that accepts and
                    // drops at once must not be hammered.
                    if stable {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    if crate::config::is_untrusted_certificate(&reason) {
                        // Said once: the retries cannot fix it, --ca can.
                        if !told_untrusted {
                            told_untrusted = true;
                            error!(device = %core.device, %reason, "{}", crate::config::UNTRUSTED_CERTIFICATE_HINT);
                        }
                    } else {
                        warn!(device = %core.device, %reason, retry_in_ms = delay.as_millis() as u64,
                              attempt = backoff.attempts(), "no connection to the hub; retrying");
                    }
                    core.emit(AgentEvent::Disconnected { reason });
                    // A reboot the hub was told about goes ahead without the hub.
                    if let Some(reboot) = core.start_pending_reboot() {
                        return Ok(RunOutcome::Rebooted(reboot));
                    }
                    tokio::select! {
                        () = &mut shutdown => return Ok(RunOutcome::Shutdown),
                        () = tokio::time::sleep(delay) => {}
                        result = core.reboot_finished() => {
                            let now = clock.now();
                            core.on_command_finished(result, now, self.boot_id.as_deref()).await;
                        }
                    }
                }
            }
        }
    }

    /// One connection, from CONNECT to whatever ends it.
    async fn session(
        &self,
        core: &mut Core,
        clock: &mut AgentClock,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> SessionEnd {
        let issued = clock.now();
        let lifetime =
            TimeDelta::from_std(self.config.token_lifetime).unwrap_or(TimeDelta::hours(1));
        let renew_before =
            TimeDelta::from_std(self.config.renew_before).unwrap_or(TimeDelta::zero());
        let expiry = issued + lifetime;
        let renew_at = expiry - renew_before;
        let password = match self
            .config
            .connection
            .password(u64::try_from(expiry.timestamp()).unwrap_or(0))
        {
            Ok(Some(password)) => password,
            Ok(None) => String::new(),
            Err(source) => {
                return SessionEnd::Fatal(AgentError::Connect(ConnectError::Sas {
                    device: core.device.clone(),
                    source,
                }));
            }
        };
        let options = mqtt_options(
            &self.config.connection,
            &self.config.endpoint,
            self.tls.as_ref(),
            password,
            self.config.keep_alive,
        );
        let (client, eventloop) = AsyncClient::new(options, CHANNEL_CAPACITY);
        let (events_tx, mut mqtt_events) = mpsc::channel(CHANNEL_CAPACITY);
        let driver = Driver(tokio::spawn(drive(eventloop, events_tx)));

        // CONNACK first (rumqttc turns a refusal into an error).
        let connack = tokio::select! {
            () = &mut *shutdown => return SessionEnd::Shutdown,
            event = tokio::time::timeout(SESSION_IO_TIMEOUT, mqtt_events.recv()) => event,
        };
        match connack {
            Ok(Some(Ok(Event::Incoming(Packet::ConnAck(_))))) => {}
            Ok(Some(Ok(other))) => {
                return SessionEnd::Lost {
                    reason: format!("expected CONNACK, got {other:?}"),
                    stable: false,
                };
            }
            Ok(Some(Err(err))) => {
                return SessionEnd::Lost {
                    reason: describe_connection_error(&err, &self.config),
                    stable: false,
                };
            }
            Ok(None) => {
                return SessionEnd::Lost {
                    reason: "the MQTT event loop stopped".into(),
                    stable: false,
                };
            }
            Err(_) => {
                return SessionEnd::Lost {
                    reason: format!("no CONNACK within {}s", SESSION_IO_TIMEOUT.as_secs()),
                    stable: false,
                };
            }
        }
        let connected_at = tokio::time::Instant::now();
        let lost = |reason: String| SessionEnd::Lost {
            reason,
            stable: connected_at.elapsed() >= STABLE_SESSION,
        };
        info!(device = %core.device, endpoint = %self.config.endpoint, "connected");
        core.emit(AgentEvent::Connected);

        let mut session = Session {
            client,
            get_rid: None,
            get_retry_at: None,
        };
        let subscribe = session
            .client
            .subscribe_many(
                [TWIN_RESPONSE_FILTER, DESIRED_PATCH_FILTER, METHODS_FILTER]
                    .into_iter()
                    .map(|filter| {
                        rumqttc::SubscribeFilter::new(filter.to_owned(), QoS::AtLeastOnce)
                    }),
            )
            .await;
        if let Err(err) = subscribe {
            return lost(format!("cannot subscribe: {err}"));
        }
        if let Err(reason) = core.get_twin(&mut session).await {
            return lost(reason);
        }
        core.desired.begin_session();

        loop {
            // A throttled twin GET whose backoff has passed goes again.
            if session
                .get_retry_at
                .is_some_and(|at| tokio::time::Instant::now() >= at)
                && let Err(reason) = core.get_twin(&mut session).await
            {
                return lost(reason);
            }
            // Flush whatever is queued.
            if let Err(reason) = core.flush_reports(&mut session).await {
                return lost(reason);
            }
            if let RebootStage::WaitingForReport { deadline, .. } = &core.reboot
                && (core.reporter.is_idle() || tokio::time::Instant::now() >= *deadline)
                && let Some(reboot) = core.start_pending_reboot()
            {
                drop(driver); // a power cut: no DISCONNECT
                return SessionEnd::PoweredOff(reboot);
            }

            let now = clock.now();
            let mut deadline = renew_at;
            if let Some(next) = core.next_window_report(now) {
                deadline = deadline.min(next);
            }
            if let RebootStage::Commanded { gave_up_at } = core.reboot {
                deadline = deadline.min(gave_up_at);
            }
            let reboot_wait = match &core.reboot {
                RebootStage::WaitingForReport { deadline, .. } => Some(*deadline),
                _ => None,
            };
            // Wake for whichever real-time wait ends first: the reboot's report, a report retry,
            // a twin GET retry.
            let io_wait = [reboot_wait, core.report_retry_at, session.get_retry_at]
                .into_iter()
                .flatten()
                .min();

            tokio::select! {
                () = &mut *shutdown => {
                    session.disconnect(&mut mqtt_events).await;
                    return SessionEnd::Shutdown;
                }
                event = mqtt_events.recv() => match event {
                    Some(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                        let now = clock.now();
                        if let Err(reason) = core
                            .on_publish(&mut session, &publish.topic, &publish.payload, now, self.boot_id.as_deref())
                            .await
                        {
                            session.disconnect(&mut mqtt_events).await;
                            return lost(reason);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => {
                        return lost(describe_connection_error(&err, &self.config));
                    }
                    None => return lost("the MQTT event loop stopped".into()),
                },
                wake = clock.sleep_until(deadline) => {
                    let now = clock.now();
                    if let Wake::ClockJumped(by) = wake {
                        if by.abs() > crate::clock::JUMP_TOLERANCE {
                            info!(device = %core.device, jump_s = by.num_seconds(), "wall clock jumped; re-evaluating the window");
                        }
                        core.emit(AgentEvent::ClockJumped(by));
                    }
                    core.report_window_if_changed(now);
                    if now >= renew_at {
                        info!(device = %core.device, "SAS token due for renewal; reconnecting with a new one");
                        core.emit(AgentEvent::TokenRenewal);
                        session.disconnect(&mut mqtt_events).await;
                        return SessionEnd::RenewToken;
                    }
                    if let RebootStage::Commanded { gave_up_at } = core.reboot
                        && now >= gave_up_at
                    {
                        let error = format!(
                            "the reboot command succeeded but the device was still up {} minutes later",
                            REBOOT_GRACE.num_minutes()
                        );
                        core.on_command_finished(Err(error), now, self.boot_id.as_deref()).await;
                    }
                }
                () = sleep_until_instant(io_wait) => {}
                result = core.reboot_finished() => {
                    let now = clock.now();
                    core.on_command_finished(result, now, self.boot_id.as_deref()).await;
                }
            }
        }
    }
}

/// Aborts the rumqttc task when a session ends, however it ends.
struct Driver(JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls rumqttc's event loop and forwards events until the first error.
async fn drive(mut eventloop: EventLoop, events: mpsc::Sender<Result<Event, ConnectionError>>) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if events.send(event).await.is_err() || failed {
            return;
        }
    }
}

async fn sleep_until_instant(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn describe_connection_error(err: &ConnectionError, config: &AgentConfig) -> String {
    match err {
        ConnectionError::ConnectionRefused(code) => format!(
            "the hub refused the connection ({code:?}); check the device key and that {} is registered",
            config.device_id()
        ),
        ConnectionError::Io(io) => format!("{} unreachable: {io}", config.endpoint),
        other => other.to_string(),
    }
}

/// How a session ended.
enum SessionEnd {
    Shutdown,
    PoweredOff(InProgressReboot),
    RenewToken,
    /// The connection failed or dropped; `stable` when it had lasted [`STABLE_SESSION`].
    Lost {
        reason: String,
        stable: bool,
    },
    Fatal(AgentError),
}

/// One connection's client and request bookkeeping.
struct Session {
    client: AsyncClient,
    /// The outstanding twin GET of this session.
    get_rid: Option<String>,
    /// When a throttled twin GET is sent again.
    get_retry_at: Option<tokio::time::Instant>,
}

impl Session {
    async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), String> {
        match tokio::time::timeout(
            SESSION_IO_TIMEOUT,
            self.client.publish(topic, QoS::AtLeastOnce, false, payload),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("cannot publish: {err}")),
            Err(_) => Err("the MQTT request queue is stuck".to_owned()),
        }
    }

    /// Sends DISCONNECT and waits (briefly) until it went out.
    async fn disconnect(&self, events: &mut mpsc::Receiver<Result<Event, ConnectionError>>) {
        if self.client.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(event) = events.recv().await {
                match event {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// Where a reboot stands, beyond what the machine knows: the I/O-side waiting.
#[derive(Debug)]
enum RebootStage {
    None,
    /// Answered and reported; waiting (bounded) for the report to be acknowledged.
    WaitingForReport {
        deadline: tokio::time::Instant,
    },
    /// The command is running.
    Running(JoinHandle<Result<(), String>>),
    /// The command succeeded; the power should go before `gave_up_at`.
    Commanded {
        gave_up_at: DateTime<Utc>,
    },
}

/// Everything that survives from one session to the next.
struct Core {
    device: String,
    store: StateStore,
    state: AgentState,
    policy: PolicyState,
    reporter: Reporter,
    machine: RebootMachine,
    /// The desired `maintenance` as last seen (valid or not) and its `$version`.
    desired: DesiredState,
    /// A desired notification changed `maintenance` since it was last applied.
    changed_maintenance: bool,
    last_window: Option<ReportedWindow>,
    rid_prefix: String,
    rid_counter: u64,
    /// Reported patches wait until then after a 429 or 5xx.
    report_retry_at: Option<tokio::time::Instant>,
    /// The backoff of a reported patch the hub throttled or failed (`AgentConfig::twin_retry`).
    report_backoff: Backoff,
    /// The backoff of a twin GET the hub throttled or failed (`AgentConfig::twin_retry`).
    get_backoff: Backoff,
    /// `AgentConfig::report_jitter`.
    report_jitter: Duration,
    reboot: RebootStage,
    events: broadcast::Sender<AgentEvent>,
    hook: RebootHook,
}

impl Core {
    fn emit(&self, event: AgentEvent) {
        let _ = self.events.send(event);
    }

    fn next_rid(&mut self) -> String {
        self.rid_counter += 1;
        format!("{}-{}", self.rid_prefix, self.rid_counter)
    }

    /// The hub answered `status` (429 or 5xx) to `request` (`"twin GET"` or `"reported
    /// patch"`): when to send it again, after that request's backoff. Logged and told.
    fn retry_later(&mut self, request: &'static str, status: u16) -> tokio::time::Instant {
        let backoff = if request == "twin GET" {
            &mut self.get_backoff
        } else {
            &mut self.report_backoff
        };
        let delay = backoff.next_delay();
        let attempt = backoff.attempts();
        warn!(device = %self.device, status, request, retry_in_ms = delay.as_millis() as u64, attempt,
              "the hub did not take a twin request; it will be sent again");
        self.emit(AgentEvent::TwinRetry {
            request,
            status,
            delay,
        });
        tokio::time::Instant::now() + delay
    }

    /// Sends the session's twin GET (again, after a throttled one).
    async fn get_twin(&mut self, session: &mut Session) -> Result<(), String> {
        let rid = self.next_rid();
        session.get_retry_at = None;
        session
            .publish(
                DeviceToHub::TwinGet { rid: rid.clone() }.to_string(),
                b" ".to_vec(),
            )
            .await?;
        session.get_rid = Some(rid);
        Ok(())
    }

    /// This device's own report delay
    /// ([`MaintenancePlan::report_delay`](casement_policy::MaintenancePlan::report_delay) of
    /// `report_jitter`): the window it reports is the window as it was that long ago, so its
    /// openings and closings reach the hub that late, and a fleet whose windows open together
    /// spreads its reports. Every report uses this one view (timer, clock jump, reconnect, new
    /// policy), so a report never goes back on an earlier one; the reboot gate uses the clock
    /// itself, never the delayed view.
    fn report_delay(&self) -> TimeDelta {
        self.policy
            .plan()
            .map(|plan| plan.report_delay(&self.device, self.report_jitter))
            .and_then(|delay| TimeDelta::from_std(delay).ok())
            .unwrap_or_default()
    }

    /// When the next window opening or closing is to be reported: the transition plus
    /// [`report_delay`](Self::report_delay).
    fn next_window_report(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let delay = self.report_delay();
        self.policy
            .next_transition(now - delay)
            .map(|transition| transition + delay)
    }

    async fn persist(&mut self, state: AgentState) -> Result<(), String> {
        let store = self.store.clone();
        let to_write = state.clone();
        let result = tokio::task::spawn_blocking(move || store.save(&to_write))
            .await
            .map_err(|err| format!("the state writer panicked: {err}"))
            .and_then(|r| r.map_err(|err| err.to_string()));
        match &result {
            Ok(()) => self.state = state,
            Err(err) => error!(device = %self.device, error = %err, "cannot write the agent state"),
        }
        result
    }

    /// Executes the machine's actions in order; `session` is `None` while offline (answers
    /// are dropped — the hub has already timed the method out — and reports wait in the queue).
    async fn execute(&mut self, actions: Vec<RebootAction>, session: Option<&Session>) {
        let mut queue: std::collections::VecDeque<RebootAction> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                RebootAction::Persist(state) => {
                    let result = self.persist(state).await;
                    if matches!(self.machine.phase(), reboot::Phase::Persisting { .. }) {
                        queue.extend(self.machine.on_persisted(result));
                    }
                }
                RebootAction::Respond(response) => {
                    self.respond(session, reboot::METHOD_NAME, response).await
                }
                RebootAction::Report(report) => {
                    let patch = report.to_patch();
                    info!(device = %self.device, report = %patch, "reboot status");
                    self.reporter.queue(patch);
                    self.report_due_if_changed();
                }
                RebootAction::RunRebootCommand => {
                    self.reboot = RebootStage::WaitingForReport {
                        deadline: tokio::time::Instant::now() + REPORT_BEFORE_REBOOT_TIMEOUT,
                    };
                }
            }
        }
    }

    async fn respond(&self, session: Option<&Session>, name: &str, response: MethodResponse) {
        let MethodResponse { rid, status, body } = response;
        info!(device = %self.device, method = name, status, body = %body, "method answered");
        if let Some(session) = session {
            let topic = DeviceToHub::MethodResponse {
                status: i32::from(status),
                rid,
            }
            .to_string();
            let payload = serde_json::to_vec(&body).unwrap_or_default();
            if let Err(err) = session.publish(topic, payload).await {
                warn!(device = %self.device, error = %err, "cannot send the method response");
            }
        }
        self.emit(AgentEvent::MethodAnswered {
            name: name.to_owned(),
            status,
            body,
        });
    }

    /// Starts the reboot once the report went out (or waited long enough). A simulated device
    /// loses power here: the reboot is returned and the run ends.
    fn start_pending_reboot(&mut self) -> Option<InProgressReboot> {
        if !matches!(self.reboot, RebootStage::WaitingForReport { .. }) {
            return None;
        }
        let reboot::Phase::Rebooting(reboot) = self.machine.phase().clone() else {
            self.reboot = RebootStage::None;
            return None;
        };
        self.emit(AgentEvent::RebootCommandStarted);
        match &self.hook {
            RebootHook::Simulated => {
                info!(device = %self.device, occurrence = ?reboot.occurrence, "simulated reboot: power off");
                self.reboot = RebootStage::None;
                Some(reboot)
            }
            RebootHook::Command(command) => {
                info!(device = %self.device, command = %command, "running the reboot command");
                self.reboot = RebootStage::Running(tokio::spawn(run_command(command.clone())));
                None
            }
        }
    }

    /// Resolves when the running reboot command finishes; never otherwise.
    async fn reboot_finished(&mut self) -> Result<(), String> {
        match &mut self.reboot {
            RebootStage::Running(handle) => match handle.await {
                Ok(result) => result,
                Err(err) => Err(format!("the reboot command task failed: {err}")),
            },
            _ => std::future::pending().await,
        }
    }

    async fn on_command_finished(
        &mut self,
        result: Result<(), String>,
        now: DateTime<Utc>,
        boot_id: Option<&str>,
    ) {
        self.emit(AgentEvent::RebootCommandFinished(result.clone()));
        match &result {
            Ok(()) => {
                info!(device = %self.device, "reboot command succeeded; waiting for the power to go");
                self.reboot = RebootStage::Commanded {
                    gave_up_at: now + REBOOT_GRACE,
                };
            }
            Err(err) => {
                error!(device = %self.device, error = %err, "the reboot failed");
                self.reboot = RebootStage::None;
            }
        }
        let actions = self
            .machine
            .on_command_finished(&context(&self.policy, &self.state, now, boot_id), result);
        self.execute(actions, None).await;
    }

    async fn flush_reports(&mut self, session: &mut Session) -> Result<(), String> {
        if let Some(at) = self.report_retry_at {
            if tokio::time::Instant::now() < at {
                return Ok(());
            }
            self.report_retry_at = None;
        }
        let prefix = self.rid_prefix.clone();
        let counter = &mut self.rid_counter;
        let next = self.reporter.take_next(|| {
            *counter += 1;
            format!("{prefix}-{counter}")
        });
        if let Some((rid, patch)) = next {
            debug!(device = %self.device, %rid, patch = %patch, "reporting");
            let topic = DeviceToHub::ReportedPatch { rid }.to_string();
            session
                .publish(topic, serde_json::to_vec(&patch).unwrap_or_default())
                .await?;
        }
        Ok(())
    }

    /// Handles one PUBLISH from the hub; an error ends the session (to GET the twin again).
    async fn on_publish(
        &mut self,
        session: &mut Session,
        topic: &str,
        payload: &[u8],
        now: DateTime<Utc>,
        boot_id: Option<&str>,
    ) -> Result<(), String> {
        let parsed = match HubToDevice::parse(topic) {
            Ok(parsed) => parsed,
            Err(err) => {
                warn!(device = %self.device, %topic, error = %err, "ignoring a publish on an unknown topic");
                return Ok(());
            }
        };
        match parsed {
            HubToDevice::TwinResponse { status, rid, .. } => {
                if session.get_rid.as_deref() == Some(rid.as_str()) {
                    return self.on_twin(session, status, payload, now).await;
                }
                match self.reporter.on_response(&rid, status) {
                    ReportAck::Accepted(patch) => {
                        self.report_backoff.reset();
                        self.emit(AgentEvent::Reported(patch));
                    }
                    ReportAck::Retry { status } => {
                        self.report_retry_at = Some(self.retry_later("reported patch", status));
                    }
                    ReportAck::Refused { status, patch } => {
                        error!(device = %self.device, status, patch = %patch, body = %String::from_utf8_lossy(payload),
                               "the hub refused a reported patch");
                    }
                    ReportAck::Unknown => {
                        debug!(device = %self.device, %rid, "twin response for an old request")
                    }
                }
            }
            HubToDevice::DesiredPatch { version } => {
                let patch: Value = match serde_json::from_slice(payload) {
                    Ok(patch) => patch,
                    Err(err) => {
                        warn!(device = %self.device, error = %err, "ignoring a desired notification that is not JSON");
                        return Ok(());
                    }
                };
                let notification = self.desired.on_notification(version, patch);
                self.on_notification(notification);
                if self.changed_maintenance {
                    self.changed_maintenance = false;
                    if self.apply_desired().await {
                        self.report_maintenance(now);
                    }
                }
            }
            HubToDevice::MethodRequest { name, rid } => {
                if name == reboot::METHOD_NAME {
                    let actions = self.machine.on_request(
                        &context(&self.policy, &self.state, now, boot_id),
                        &rid,
                        payload,
                    );
                    self.execute(actions, Some(session)).await;
                } else {
                    let body = serde_json::json!({"message": format!("unknown method '{name}'; this device implements 'reboot'")});
                    self.respond(
                        Some(session),
                        &name,
                        MethodResponse {
                            rid,
                            status: 404,
                            body,
                        },
                    )
                    .await;
                }
            }
            HubToDevice::C2d { .. } => {
                debug!(device = %self.device, "ignoring a cloud-to-device message")
            }
        }
        Ok(())
    }

    /// The session's twin GET was answered: the desired properties in it are the truth now.
    async fn on_twin(
        &mut self,
        session: &mut Session,
        status: u16,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        session.get_rid = None;
        if status == 429 || (500..=599).contains(&status) {
            // Throttled or failing: ask again after a backoff, on this connection.
            session.get_retry_at = Some(self.retry_later("twin GET", status));
            return Ok(());
        }
        self.get_backoff.reset();
        let twin: Option<Value> = (status == 200)
            .then(|| serde_json::from_slice(payload).ok())
            .flatten();
        let Some(desired) = twin.as_ref().and_then(|t| t.get("desired")) else {
            return Err(format!(
                "the twin GET failed with status {status}: {}",
                String::from_utf8_lossy(&payload[..payload.len().min(200)])
            ));
        };
        let replayed = self.desired.on_get(desired);
        self.emit(AgentEvent::TwinFetched {
            desired_version: self.desired.version().unwrap_or(0),
        });
        for notification in replayed {
            self.on_notification(notification);
        }
        self.changed_maintenance = false;
        self.apply_desired().await;
        // Every (re)connect reports the maintenance section, window included.
        self.report_maintenance(now);
        Ok(())
    }

    /// Notes what a desired notification did.
    fn on_notification(&mut self, notification: Notification) {
        match notification {
            Notification::Stale { version, current } => {
                debug!(device = %self.device, version, current, "ignoring a desired notification that is not newer");
                self.emit(AgentEvent::DesiredIgnored { version, current });
            }
            Notification::Maintenance => self.changed_maintenance = true,
            Notification::Buffered | Notification::Other => {}
        }
    }

    /// Applies the held desired `maintenance`; returns whether anything changed.
    async fn apply_desired(&mut self) -> bool {
        let outcome = self.policy.apply_desired(self.desired.maintenance());
        let changed = outcome.changed();
        match &outcome {
            ApplyOutcome::Applied {
                policy, revision, ..
            } => {
                if changed {
                    info!(device = %self.device, %policy, %revision, "policy applied");
                }
            }
            ApplyOutcome::Rejected { error, .. } => {
                warn!(device = %self.device, %error, "policy rejected; keeping the previous one")
            }
            ApplyOutcome::Cleared { .. } => {
                if changed {
                    info!(device = %self.device, "policy removed")
                }
            }
        }
        self.emit(AgentEvent::Policy(outcome));
        let persisted = self.policy.persisted();
        if persisted != self.state.policy {
            let mut state = self.state.clone();
            state.policy = persisted;
            let _ = self.persist(state).await;
        }
        changed
    }

    /// Whether the device rebooted, or is rebooting, for the window occurrence `occurrence`
    /// (what clears `maintenance.window.due`).
    fn rebooted_for(state: &AgentState, occurrence: DateTime<Utc>) -> bool {
        state.rebooted_for(occurrence)
            || state
                .in_progress
                .as_ref()
                .is_some_and(|r| r.occurrence == Some(occurrence))
    }

    /// Queues the whole maintenance section (status, policy, zone and window).
    fn report_maintenance(&mut self, now: DateTime<Utc>) {
        let seen = now - self.report_delay();
        let state = &self.state;
        let (patch, window) = self
            .policy
            .report(seen, &|occurrence| Self::rebooted_for(state, occurrence));
        self.last_window = window;
        self.reporter.queue(patch);
    }

    /// After a reboot report: `due` turns false (or true again after a failed reboot) in the
    /// same patch, composed with the report queued just before, so the window's `due` costs
    /// no patch of its own.
    fn report_due_if_changed(&mut self) {
        let Some(window) = self.last_window else {
            return;
        };
        let updated = window.rebooted(Self::rebooted_for(&self.state, window.opens_at));
        if updated != window {
            self.reporter.queue(window_patch(&updated));
            self.last_window = Some(updated);
        }
    }

    /// Queues `maintenance.window` when it differs from what was last reported.
    fn report_window_if_changed(&mut self, now: DateTime<Utc>) {
        let seen = now - self.report_delay();
        let state = &self.state;
        let window = self
            .policy
            .window_report(seen, &|occurrence| Self::rebooted_for(state, occurrence));
        if window != self.last_window {
            if let Some(window) = &window {
                info!(device = %self.device, open = window.open, opens_at = %window.opens_at, closes_at = %window.closes_at,
                      "maintenance window {}", if window.open { "open" } else { "closed" });
                self.reporter.queue(window_patch(window));
            }
            self.last_window = window;
        }
    }
}

/// What the reboot machine reads, from the parts of [`Core`] it needs.
fn context<'a>(
    policy: &'a PolicyState,
    state: &'a AgentState,
    now: DateTime<Utc>,
    boot_id: Option<&'a str>,
) -> Context<'a> {
    Context {
        now,
        policy: policy.active(now),
        state,
        boot_id,
    }
}

/// Runs the reboot command (argv, no shell) with a timeout.
async fn run_command(command: RebootCommand) -> Result<(), String> {
    let mut child = tokio::process::Command::new(command.program());
    child
        .args(command.args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = child
        .spawn()
        .map_err(|err| format!("cannot run `{command}`: {err}"))?;
    match tokio::time::timeout(REBOOT_COMMAND_TIMEOUT, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "`{command}` did not finish within {}s",
            REBOOT_COMMAND_TIMEOUT.as_secs()
        )),
        Ok(Err(err)) => Err(format!("`{command}` failed: {err}")),
        Ok(Ok(output)) if output.status.success() => Ok(()),
        Ok(Ok(output)) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr = stderr.trim();
            let tail: String = stderr
                .char_indices()
                .rev()
                .nth(400)
                .map_or(stderr, |(i, _)| &stderr[i..])
                .to_owned();
            Err(format!("`{command}` exited with {}: {tail}", output.status))
        }
    }
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), which changes on every boot.
pub fn read_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
}
