//! SIGTERM/SIGINT stop the server; SIGHUP reloads the config.

use std::path::Path;

use super::reload::{self, reload};
use super::Handle;

/// Waits for SIGTERM or SIGINT, reloading on SIGHUP meanwhile.
pub async fn run_until_stopped(handle: &Handle, config: &Path) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    let watcher = reload::run(handle, config);
    tokio::pin!(watcher);
    loop {
        tokio::select! {
            _ = &mut watcher => {}
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); return; }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); return; }
            _ = hup.recv() => { reload(handle, config); }
        }
    }
}
