use clap::Parser;

use std::process::ExitCode;

fn main() -> ExitCode {
    // One crypto provider for the whole process (rustls, the upstream client, the IdP client).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    portcullis::cli::run(portcullis::cli::Cli::parse())
}
