//! The one shutdown-signal handler the binaries share (`casement`, `casement hub` inside it,
//! `casement-agent`): the only module of this crate that touches a runtime, behind the
//! `signal` feature.

/// Completes on SIGINT or SIGTERM (Ctrl-C only on non-Unix platforms). Call it again after a
/// first signal to wait for a second one (a forced stop).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
