//! `casement`: the operator's command line and terminal on top of Casement's libraries — the
//! composition root. It wires the scheduler library ([`casement_scheduler`]: apply, run,
//! report), the service client ([`casement_client`]), the local hub ([`casement_hub`], for
//! `casement hub`) and simulated agents ([`casement_agent`], for `casement demo`) together;
//! nothing depends on this crate.
//!
//! # Layout
//! - [`cli`]: clap definitions and dispatch, one module per subcommand (`validate`, `windows`,
//!   `apply`, `run`, `report`, `query`/`twin`, `hub`, `demo`; the client flags in
//!   `cli::client_args`), exit codes and error descriptions.
//! - [`demo`]: `casement demo` — an embedded hub, a simulated fleet, the demo policies and the
//!   scheduler, in real time, ending with the compliance report and the devices' own log.
//! - [`progress`]: the terminal progress bar of `casement apply`.

pub mod cli;
pub mod demo;
pub mod progress;
