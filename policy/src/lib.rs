//! Casement maintenance-window policies: the TOML policy format, validation with file:line:column
//! diagnostics, window math across zones and DST, and the maintenance twin schema.
//!
//! Pure code: no sockets, no async. The agent and the scheduler both compute windows with
//! [`WindowSpec::window_at`], so they agree on when a device may reboot.
//!
//! ```
//! use casement_policy::parse_policy;
//! use chrono::{TimeZone, Utc};
//!
//! let policy = parse_policy(
//!     "store-gateways.toml".as_ref(),
//!     r#"
//!         [policy]
//!         name   = "store-gateways-weekly"
//!         target = "tags.role = 'gateway'"
//!
//!         [window]
//!         schedule = "0 2 * * SUN"
//!         duration = "2h"
//!         timezone = "device"
//!     "#,
//! )
//! .unwrap();
//! let zone = policy.window().timezone().resolve(Some(chrono_tz::Europe::Amsterdam)).unwrap();
//! let now = Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap();
//! let state = policy.window().window_at(zone, now).unwrap();
//! assert!(!state.open);
//! assert_eq!(state.window.opens_at, Utc.with_ymd_and_hms(2026, 11, 29, 1, 0, 0).unwrap());
//! ```
//!
//! # Layout
//! - [`file`]: policy files — TOML with spans, [`Diagnostic`]s, [`load`] of a set (all or nothing).
//! - [`policy`]: the validated [`Policy`], [`RebootSettings`], [`Rollout`], [`MaxFailures`],
//!   the [`Revision`] hash, [`PolicySet`].
//! - [`window`]: window math — [`WindowSpec`], [`Window`], [`WindowState`], upcoming windows with
//!   DST and blackout annotations.
//! - [`schedule`]: cron schedules (croner) with errors that name the wrong field.
//! - [`zone`]: IANA zones or `"device"`, with "did you mean" suggestions.
//! - [`duration`]: `"90s"`, `"2h"`, `"1h30m"`, `"1d"` (re-exported from
//!   [`casement_iothub::duration`], which the hub's flags parse with too).
//! - [`maintenance`]: the maintenance twin schema (desired, reported, `iothubDM.reboot`), query
//!   paths, validation of a desired policy on the device, and the `reboot` direct method's
//!   contract ([`RebootRequest`], [`RebootPayload`], [`RebootAnswer`], [`RefusalReason`]).
//! - [`clock`]: the injected [`Clock`] (re-exported from [`casement_iothub::clock`]): [`SystemClock`]
//!   and the test [`ManualClock`].

pub use casement_iothub::clock;
pub use casement_iothub::duration;
pub mod file;
pub mod maintenance;
pub mod policy;
pub mod schedule;
mod suggest;
pub mod window;
pub mod zone;

pub use clock::{Clock, ManualClock, SystemClock};
pub use duration::{format_duration, parse_duration};
pub use file::{Diagnostic, load, load_file, parse_policy};
pub use maintenance::{
    DesiredMaintenance, ForcedReboot, MaintenanceError, MaintenancePlan, MaintenanceStatus,
    RebootAnswer, RebootPayload, RebootReport, RebootRequest, RebootStatus, RefusalReason,
    ReportedMaintenance, ReportedWindow, SchemaError,
};
pub use policy::{MaxFailures, Policy, PolicySet, RebootSettings, Revision, Rollout};
pub use schedule::Schedule;
pub use window::{ScheduledWindow, Window, WindowKind, WindowSpec, WindowState};
pub use zone::ZoneSpec;
