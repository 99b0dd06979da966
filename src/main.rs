use clap::Parser;

// mimalloc: fewer cycles per request than glibc malloc (bench/README.md), and memory returned
// to the system after a burst of connections.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

fn main() -> ExitCode {
    // One crypto provider for the whole process (rustls, the upstream client, the IdP client).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    portcullis::cli::run(portcullis::cli::Cli::parse())
}
