//! Live progress per policy: what is counted (pure, [`snapshot`]) and how it is shown
//! ([`Display`]: indicatif bars on a terminal, plain lines otherwise).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use casement_policy::{PolicySet, Window};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use casement_scheduler::metrics::Metrics;
use casement_scheduler::report::{DeviceState, Report};

/// One policy's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProgress {
    /// The policy.
    pub policy: String,
    /// Devices whose desired policy it is.
    pub targeted: u32,
    /// Of those, reporting it applied.
    pub applied: u32,
    /// Devices whose latest window is open now (rebooted in it or not).
    pub in_window: u32,
    /// Devices powered off for a reboot right now.
    pub rebooting: u32,
    /// Devices that rebooted in their latest window (the report's `compliant`).
    pub completed: u32,
    /// `reboot` invocations the agents refused, since the start.
    pub refused: u64,
    /// Devices whose reboot failed or was paused in their latest window.
    pub failed: u32,
    /// The latest window open now, on any of its devices.
    pub open_window: Option<Window>,
    /// When the next window opens, when none is open.
    pub next_window: Option<DateTime<Utc>>,
}

impl PolicyProgress {
    /// Whether every targeted device rebooted in its latest window.
    pub fn done(&self) -> bool {
        self.targeted > 0 && self.completed == self.targeted
    }
}

/// Every policy's progress at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// When.
    pub at: DateTime<Utc>,
    /// Per policy, by name.
    pub policies: Vec<PolicyProgress>,
}

impl Snapshot {
    /// Whether every device of every policy rebooted in its latest window.
    pub fn all_done(&self) -> bool {
        !self.policies.is_empty() && self.policies.iter().all(PolicyProgress::done)
    }
}

/// Builds the snapshot from a report, the devices powered off now (per policy), and the run
/// loop's metrics.
pub fn snapshot(
    report: &Report,
    policies: &PolicySet,
    rebooting: &BTreeMap<String, u32>,
    metrics: &Metrics,
    now: DateTime<Utc>,
) -> Snapshot {
    let mut out: Vec<PolicyProgress> = Vec::new();
    let mut zones: BTreeMap<&str, Vec<Tz>> = BTreeMap::new();
    for p in &report.policies {
        out.push(PolicyProgress {
            policy: p.policy.clone(),
            targeted: p.counts.targeted,
            applied: p.counts.applied,
            in_window: 0,
            rebooting: rebooting.get(&p.policy).copied().unwrap_or(0),
            completed: p.counts.compliant,
            refused: metrics.invocations(&p.policy, "refused"),
            failed: p.counts.failed + p.counts.paused,
            open_window: None,
            next_window: None,
        });
    }
    for d in &report.devices {
        let Some(p) = out.iter_mut().find(|p| p.policy == d.policy) else {
            continue;
        };
        if let Some(zone) = d.zone.as_deref().and_then(|z| z.parse::<Tz>().ok()) {
            let known = zones.entry(&d.policy).or_default();
            if !known.contains(&zone) {
                known.push(zone);
            }
        }
        // The window open now (a device inside it may be judged by the one before).
        if let Some(w) = d.open_window
            && w.opens_at <= now
            && now < w.closes_at
        {
            p.in_window += 1;
            let window = Window {
                opens_at: w.opens_at,
                closes_at: w.closes_at,
                occurrence: w.opens_at,
            };
            if p.open_window.is_none_or(|o| o.opens_at < window.opens_at) {
                p.open_window = Some(window);
            }
        }
        debug_assert!(d.state != DeviceState::InWindow || d.last_window.is_some());
    }
    for p in &mut out {
        if p.open_window.is_some() {
            continue;
        }
        let Some(policy) = policies.get(&p.policy) else {
            continue;
        };
        let spec = policy.window();
        p.next_window = zones
            .get(p.policy.as_str())
            .into_iter()
            .flatten()
            .filter_map(|tz| spec.window_at(*tz, now))
            .filter(|state| !state.open)
            .map(|state| state.window.opens_at)
            .min();
    }
    Snapshot {
        at: now,
        policies: out,
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// indicatif progress bars (for a terminal); story lines are printed above them.
    Bars,
    /// Plain, timestamped log lines (for pipes, files and CI logs).
    Lines,
}

/// How often the plain-lines mode repeats unchanged-looking progress at most.
const LINES_EVERY: Duration = Duration::from_secs(5);

fn clock_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&chrono::Local)
        .format("%H:%M:%S")
        .to_string()
}

/// "1 device", "2 devices".
pub(crate) fn devices(n: u32) -> String {
    if n == 1 {
        "1 device".to_owned()
    } else {
        format!("{n} devices")
    }
}

fn in_secs(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_milliseconds().max(0).div_euclid(1000)
}

/// The progress display. Everything it prints goes to `out` (lines mode) or to the terminal
/// through indicatif (bars mode, drawn on stdout from the calling thread only).
pub struct Display<'a> {
    mode: ProgressMode,
    out: &'a mut dyn Write,
    started: Instant,
    multi: MultiProgress,
    bars: BTreeMap<String, ProgressBar>,
    spinner: Option<ProgressBar>,
    last_lines: Option<(Instant, Vec<String>)>,
    windows: BTreeMap<String, DateTime<Utc>>,
    done: BTreeSet<String>,
}

impl std::fmt::Debug for Display<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Display")
            .field("mode", &self.mode)
            .field("bars", &self.bars.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<'a> Display<'a> {
    /// A display in `mode`, its clock starting now.
    pub fn new(mode: ProgressMode, out: &'a mut dyn Write) -> Self {
        let target = match mode {
            ProgressMode::Bars => ProgressDrawTarget::stdout_with_hz(8),
            ProgressMode::Lines => ProgressDrawTarget::hidden(),
        };
        Self {
            mode,
            out,
            started: Instant::now(),
            multi: MultiProgress::with_draw_target(target),
            bars: BTreeMap::new(),
            spinner: None,
            last_lines: None,
            windows: BTreeMap::new(),
            done: BTreeSet::new(),
        }
    }

    fn stamp(&self) -> String {
        let s = self.started.elapsed().as_secs();
        format!("[{:02}:{:02}]", s / 60, s % 60)
    }

    /// Prints a line of the story, stamped with the time since the start.
    pub fn say(&mut self, text: &str) -> std::io::Result<()> {
        let line = format!("{} {text}", self.stamp());
        match self.mode {
            ProgressMode::Bars => self.multi.println(line),
            ProgressMode::Lines => {
                writeln!(self.out, "{line}")?;
                self.out.flush()
            }
        }
    }

    /// Prints text as is (the report, the closing notes).
    pub fn print(&mut self, text: &str) -> std::io::Result<()> {
        match self.mode {
            ProgressMode::Bars if !self.multi.is_hidden() && !self.bars.is_empty() => {
                self.multi.println(text.trim_end_matches('\n'))
            }
            _ => {
                write!(self.out, "{text}")?;
                self.out.flush()
            }
        }
    }

    /// Shows a counter while waiting for something (bars mode only).
    pub fn waiting(&mut self, what: &str, done: u64, total: u64) {
        if self.mode != ProgressMode::Bars {
            return;
        }
        let bar = self.spinner.get_or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template("{msg} {bar:30.cyan/blue} {pos}/{len}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        bar.set_message(what.to_owned());
        bar.set_length(total);
        bar.set_position(done);
    }

    /// Removes the waiting counter.
    pub fn done_waiting(&mut self) {
        if let Some(bar) = self.spinner.take() {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }

    /// Shows a new snapshot: bars, or lines when something changed (at most every few
    /// seconds), and story lines when a window opens or a policy's devices have all rebooted.
    pub fn update(&mut self, snap: &Snapshot) -> std::io::Result<()> {
        let mut events = Vec::new();
        for p in &snap.policies {
            if let Some(w) = p.open_window
                && self.windows.get(&p.policy) != Some(&w.opens_at)
            {
                self.windows.insert(p.policy.clone(), w.opens_at);
                events.push(format!(
                    "{}: window open {} – {} ({})",
                    p.policy,
                    clock_time(w.opens_at),
                    clock_time(w.closes_at),
                    devices(p.in_window)
                ));
            }
            if p.done() {
                if self.done.insert(p.policy.clone()) {
                    events.push(if p.targeted == 1 {
                        format!("{}: its device rebooted inside its window", p.policy)
                    } else {
                        format!(
                            "{}: all {} devices rebooted inside their window",
                            p.policy, p.targeted
                        )
                    });
                }
            } else {
                self.done.remove(&p.policy);
            }
        }
        if self.mode == ProgressMode::Bars {
            self.draw_bars(snap);
        }
        for e in events {
            self.say(&e)?;
        }
        if self.mode == ProgressMode::Lines {
            self.write_lines(snap)?;
        }
        Ok(())
    }

    fn status(p: &PolicyProgress, now: DateTime<Utc>, aligned: bool) -> String {
        let mut s = if aligned {
            format!(
                "in window {:>4} · rebooting {:>3} · refused {} · failed {}",
                p.in_window, p.rebooting, p.refused, p.failed
            )
        } else {
            format!(
                "in window {} · rebooting {} · refused {} · failed {}",
                p.in_window, p.rebooting, p.refused, p.failed
            )
        };
        if p.applied < p.targeted {
            s.push_str(&format!(" · applied {}/{}", p.applied, p.targeted));
        }
        if let Some(next) = p.next_window {
            s.push_str(&format!(
                " · next window {} (in {}s)",
                clock_time(next),
                in_secs(now, next)
            ));
        }
        s
    }

    fn draw_bars(&mut self, snap: &Snapshot) {
        let width = snap
            .policies
            .iter()
            .map(|p| p.policy.len())
            .max()
            .unwrap_or(0);
        for p in &snap.policies {
            let bar = self.bars.entry(p.policy.clone()).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(u64::from(p.targeted)));
                let template = format!(
                    "{{prefix:<{width}}} {{bar:28.green/white}} {{pos:>4}}/{{len:<4}} {{msg}}"
                );
                bar.set_style(
                    ProgressStyle::with_template(&template)
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("█▉▊▋▌▍▎▏ "),
                );
                bar.set_prefix(p.policy.clone());
                bar
            });
            bar.set_length(u64::from(p.targeted));
            bar.set_position(u64::from(p.completed));
            bar.set_message(Self::status(p, snap.at, true));
        }
    }

    fn write_lines(&mut self, snap: &Snapshot) -> std::io::Result<()> {
        let width = snap
            .policies
            .iter()
            .map(|p| p.policy.len())
            .max()
            .unwrap_or(0);
        let lines: Vec<String> = snap
            .policies
            .iter()
            .map(|p| {
                format!(
                    "{:<width$}  completed {}/{} · {}",
                    p.policy,
                    p.completed,
                    p.targeted,
                    Self::status(p, snap.at, false)
                )
            })
            .collect();
        // The countdown changes every second; compare without it.
        let key: Vec<String> = lines
            .iter()
            .map(|l| l.split(" · next window").next().unwrap_or(l).to_owned())
            .collect();
        let due = match &self.last_lines {
            None => true,
            Some((when, last)) => {
                *last != key && when.elapsed() >= Duration::from_secs(1)
                    || when.elapsed() >= LINES_EVERY * 6
            }
        };
        if !due {
            return Ok(());
        }
        let stamp = self.stamp();
        for line in &lines {
            writeln!(self.out, "{stamp}   {line}")?;
        }
        self.out.flush()?;
        self.last_lines = Some((Instant::now(), key));
        Ok(())
    }

    /// Leaves the bars drawn in their final state and stops drawing.
    pub fn finish(&mut self) {
        self.done_waiting();
        for bar in self.bars.values() {
            bar.finish();
        }
        self.bars.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casement_scheduler::fleet::TwinView;
    use casement_scheduler::journal::JournalView;
    use casement_scheduler::report;
    use chrono::TimeZone;
    use serde_json::json;

    fn policies() -> PolicySet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.toml"),
            r#"
[policy]
name = "p"
target = "tags.role = 'gateway'"
[window]
schedule = "*/2 * * * *"
duration = "90s"
timezone = "device"
[reboot]
expected_duration = "15s"
"#,
        )
        .unwrap();
        casement_policy::load([dir.path()]).unwrap()
    }

    fn at(min: u32, sec: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 4, 10, min, sec).unwrap()
    }

    fn twin(id: &str, set: &PolicySet, last_reboot: Option<&str>) -> TwinView {
        let p = set.get("p").unwrap();
        let desired = serde_json::to_value(casement_policy::DesiredMaintenance::from(p)).unwrap();
        let mut reported = json!({
            "maintenance": {
                "policy": "p", "revision": p.revision().as_str(), "status": "applied",
                "timezone": "Asia/Tokyo",
                "window": {"open": true, "opensAt": "2026-05-04T10:00:00.000Z",
                           "closesAt": "2026-05-04T10:01:30.000Z"}
            }
        });
        if let Some(t) = last_reboot {
            reported["iothubDM"] = json!({"reboot": {
                "lastReboot": t, "status": "completed", "occurrence": "2026-05-04T10:00:00.000Z"
            }});
        }
        TwinView::from_value(json!({
            "deviceId": id,
            "connectionState": "Connected",
            "properties": {
                "desired": {"maintenance": desired, "$metadata": {"$lastUpdated": "2026-05-04T09:50:00.000Z"}},
                "reported": reported
            }
        }))
        .unwrap()
    }

    #[test]
    fn counts_follow_the_report_and_the_ground_truth() {
        let set = policies();
        let views = [
            twin("a", &set, Some("2026-05-04T10:00:20.000Z")),
            twin("b", &set, None),
        ];
        let now = at(0, 30);
        let r = report::build(
            &views,
            &JournalView::default(),
            now,
            Duration::from_secs(3600),
            None,
        );
        let metrics = Metrics::new();
        metrics.invocation("p", "refused");
        let rebooting = BTreeMap::from([("p".to_owned(), 1)]);
        let snap = snapshot(&r, &set, &rebooting, &metrics, now);
        assert_eq!(snap.policies.len(), 1);
        let p = &snap.policies[0];
        assert_eq!(
            (
                p.targeted,
                p.applied,
                p.in_window,
                p.rebooting,
                p.completed,
                p.refused
            ),
            (2, 2, 2, 1, 1, 1)
        );
        assert_eq!(p.open_window.map(|w| w.opens_at), Some(at(0, 0)));
        assert_eq!(p.next_window, None);
        assert!(!snap.all_done());

        // After the window closed, before the next: the next one is announced.
        let later = at(1, 45);
        let r = report::build(
            &views,
            &JournalView::default(),
            later,
            Duration::from_secs(3600),
            None,
        );
        let snap = snapshot(&r, &set, &BTreeMap::new(), &metrics, later);
        assert_eq!(snap.policies[0].in_window, 0);
        assert_eq!(snap.policies[0].next_window, Some(at(2, 0)));
    }

    #[test]
    fn done_when_every_device_rebooted_in_its_latest_window() {
        let set = policies();
        let views = [
            twin("a", &set, Some("2026-05-04T10:00:20.000Z")),
            twin("b", &set, Some("2026-05-04T10:00:25.000Z")),
        ];
        let now = at(0, 40);
        let r = report::build(
            &views,
            &JournalView::default(),
            now,
            Duration::from_secs(3600),
            None,
        );
        let snap = snapshot(&r, &set, &BTreeMap::new(), &Metrics::new(), now);
        assert!(snap.all_done());
        let empty = Snapshot {
            at: now,
            policies: Vec::new(),
        };
        assert!(!empty.all_done(), "no policy, nothing rebooted: not done");
    }

    #[test]
    fn lines_mode_tells_window_openings_and_completion_once() {
        let mut out = Vec::new();
        let p = PolicyProgress {
            policy: "p".into(),
            targeted: 2,
            applied: 2,
            in_window: 2,
            rebooting: 0,
            completed: 2,
            refused: 0,
            failed: 0,
            open_window: Some(Window {
                opens_at: at(0, 0),
                closes_at: at(1, 30),
                occurrence: at(0, 0),
            }),
            next_window: None,
        };
        let snap = Snapshot {
            at: at(0, 30),
            policies: vec![p],
        };
        {
            let mut display = Display::new(ProgressMode::Lines, &mut out);
            display.update(&snap).unwrap();
            display.update(&snap).unwrap();
            display.finish();
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("window open").count(), 1, "{text}");
        assert_eq!(
            text.matches("all 2 devices rebooted inside their window")
                .count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("completed 2/2").count(), 1, "{text}");
    }
}
