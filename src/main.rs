use clap::Parser;

use std::process::ExitCode;

fn main() -> ExitCode {
    // One crypto provider for the whole process (rustls, the upstream client, the IdP client).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    portcullis::cli::run(portcullis::cli::Cli::parse())
}

/// jemalloc: ~10% less CPU per proxied request than glibc's allocator (whose consolidation of
/// hyper's 8 KiB read buffers showed in profiles), at about the same idle and per-WebSocket
/// memory (docs/performance.md). On by default (feature `jemalloc`).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
