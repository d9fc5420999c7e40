//! `casement`: the operator CLI. Parses the command line and hands it to the library.

use std::process::ExitCode;

use casement::cli::{Cli, describe, exit_code, run};
use clap::Parser;

fn main() -> ExitCode {
    casement_client::ensure_crypto_provider();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            if let Some(hint) = casement::cli::client_args::untrusted_certificate_hint(&error) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(exit_code(&error))
        }
    }
}
