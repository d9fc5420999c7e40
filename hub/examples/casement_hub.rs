//! `casement hub` as a standalone program, for trying the hub without the `casement` binary:
//!
//! ```sh
//! cargo run -p casement-hub --example casement_hub -- --https-addr 127.0.0.1:8443
//! ```

use clap::Parser;

/// A local Azure IoT Hub.
#[derive(Debug, Parser)]
#[command(name = "casement-hub")]
struct Cli {
    #[command(flatten)]
    hub: casement_hub::HubArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match casement_hub::run_cli(cli.hub, casement_hub::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
