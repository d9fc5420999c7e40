//! The test kit's side of the invariant checks. The checker itself — DESIGN.md's invariants 1
//! to 4 against a simulated run's ground truth — has one home,
//! [`casement_agent::simulate::invariants`], shared with the demo and the scheduler's tests;
//! this module re-exports it and adds what needs the scheduler's types: the hub's twins and
//! `casement report` checked against the same facts ([`TwinAndReportChecks`]).

use std::collections::BTreeMap;

pub use casement_agent::simulate::invariants::*;
use casement_policy::RebootStatus;
use casement_scheduler::fleet::TwinView;
use casement_scheduler::report::{DeviceState, Report};

/// Checks of what the scheduler's side shows against the facts of a run.
pub trait TwinAndReportChecks {
    /// The hub's twins agree with the ground truth: each device carries its assigned policy
    /// (desired), reports it applied at its revision, and its `iothubDM.reboot` names its last
    /// true reboot, completed.
    fn check_twins(&self, twins: &[TwinView]) -> Vec<Violation>;

    /// `casement report` agrees with the ground truth: a device is compliant exactly when it
    /// really rebooted in its latest window, every device with a policy is listed once, and
    /// the per-policy compliant counts add up.
    fn check_report(&self, report: &Report) -> Vec<Violation>;
}

impl TwinAndReportChecks for Facts {
    fn check_twins(&self, twins: &[TwinView]) -> Vec<Violation> {
        let mut out = Vec::new();
        let by_id: BTreeMap<&str, &TwinView> =
            twins.iter().map(|t| (t.device_id.as_str(), t)).collect();
        let mut last: BTreeMap<&str, &Reboot> = BTreeMap::new();
        for r in &self.reboots {
            let entry = last.entry(r.device.as_str()).or_insert(r);
            if r.at > entry.at {
                *entry = r;
            }
        }
        for device in &self.devices {
            let id = device.id.as_str();
            let twin_err = |what: String| Violation::Twin {
                device: id.to_owned(),
                what,
            };
            let Some(twin) = by_id.get(id) else {
                out.push(twin_err("no twin".into()));
                continue;
            };
            let assigned = self.assignment.get(id);
            let desired = twin.desired_policy_name();
            if desired != assigned.map(String::as_str) {
                out.push(twin_err(format!(
                    "desired policy {desired:?}, but its tags make it {assigned:?}"
                )));
            }
            if let Some(policy) = assigned.and_then(|a| self.policy(a)) {
                match twin.reported() {
                    Some(r)
                        if r.policy == policy.name()
                            && r.revision == policy.revision().as_str()
                            && r.status == casement_policy::MaintenanceStatus::Applied => {}
                    other => out.push(twin_err(format!(
                        "reports {other:?}, not {} {} applied",
                        policy.name(),
                        policy.revision()
                    ))),
                }
            }
            match (last.get(id), twin.reboot()) {
                (None, None) => {}
                (None, Some(report)) => out.push(twin_err(format!(
                    "reports a reboot ({report:?}) that never happened"
                ))),
                (Some(truth), None) => out.push(twin_err(format!(
                    "does not report its reboot at {}",
                    truth.at
                ))),
                (Some(truth), Some(report)) => {
                    if report.occurrence != truth.occurrence {
                        out.push(twin_err(format!(
                            "reports occurrence {:?}, the last reboot was for {:?}",
                            report.occurrence, truth.occurrence
                        )));
                    }
                    if report.status != RebootStatus::Completed {
                        out.push(twin_err(format!(
                            "reboot status {:?} long after the device came back",
                            report.status
                        )));
                    }
                    // lastReboot is the device's own clock when it accepted, a moment before
                    // the power went.
                    let close = report.last_reboot.is_some_and(|t| {
                        t <= truth.device_time && truth.device_time - t <= self.power_off_lag
                    });
                    if !close {
                        out.push(twin_err(format!(
                            "lastReboot {:?}, but the power went at {} by its clock",
                            report.last_reboot, truth.device_time
                        )));
                    }
                }
            }
        }
        out
    }

    fn check_report(&self, report: &Report) -> Vec<Violation> {
        let mut out = Vec::new();
        let err = |subject: &str, what: String| Violation::Report {
            subject: subject.to_owned(),
            what,
        };
        let listed: BTreeMap<&str, usize> =
            report.devices.iter().fold(BTreeMap::new(), |mut m, d| {
                *m.entry(d.device.as_str()).or_default() += 1;
                m
            });
        for device in self.assignment.keys() {
            match listed.get(device.as_str()) {
                Some(1) => {}
                n => out.push(err(device, format!("listed {n:?} times"))),
            }
        }
        let mut compliant: BTreeMap<&str, u32> = BTreeMap::new();
        for d in &report.devices {
            let Some(window) = d.last_window else {
                if d.state == DeviceState::Compliant {
                    out.push(err(&d.device, "compliant without any window".into()));
                }
                continue;
            };
            let truly = self.reboots.iter().any(|r| {
                r.device == d.device
                    && r.policy.as_deref() == Some(d.policy.as_str())
                    && r.occurrence == Some(window.opens_at)
            });
            if truly {
                *compliant.entry(d.policy.as_str()).or_default() += 1;
            }
            match (d.state, truly) {
                (DeviceState::Compliant, false) => out.push(err(
                    &d.device,
                    format!(
                        "compliant, but it did not reboot in the window {}",
                        window.opens_at
                    ),
                )),
                (state, true) if state != DeviceState::Compliant => out.push(err(
                    &d.device,
                    format!(
                        "{}, but it rebooted in the window {}",
                        state.as_str(),
                        window.opens_at
                    ),
                )),
                _ => {}
            }
            if self.assignment.get(&d.device) != Some(&d.policy) {
                out.push(err(
                    &d.device,
                    format!(
                        "listed under {}, but carries {:?}",
                        d.policy,
                        self.assignment.get(&d.device)
                    ),
                ));
            }
        }
        for p in &report.policies {
            let truth = compliant.get(p.policy.as_str()).copied().unwrap_or(0);
            if p.counts.compliant != truth {
                out.push(err(
                    &p.policy,
                    format!(
                        "{} compliant, but {truth} devices really rebooted in their latest window",
                        p.counts.compliant
                    ),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
