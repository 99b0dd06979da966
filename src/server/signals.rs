//! SIGTERM/SIGINT stop the server; SIGHUP reloads the config.

use std::path::Path;

use super::Handle;
use crate::config::ProcessEnv;
use crate::runtime::Runtime;

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
    let watcher = super::reload_watch::run(handle, config);
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

/// Builds a new runtime from the file; swaps it in only if all of it is valid.
pub fn reload(handle: &Handle, config: &Path) -> bool {
    let old = handle.shared.runtime.load_full();
    match Runtime::reload(config, &ProcessEnv, Some(&old)) {
        Ok(rt) => {
            if old.settings.address != rt.settings.address
                || old.settings.http_redirect_addr != rt.settings.http_redirect_addr
                || old.settings.metrics_address != rt.settings.metrics_address
                || old.settings.insecure_server != rt.settings.insecure_server
            {
                tracing::warn!("listener settings (address, http_redirect_addr, metrics_address, insecure_server) changed: they take effect at the next restart");
            }
            for w in &rt.warnings {
                tracing::warn!("{w}");
            }
            handle.swap(rt);
            tracing::info!(config = %config.display(), "config reloaded");
            handle.shared.metrics.reload(true);
            true
        }
        Err(errs) => {
            for e in &errs.0 {
                tracing::error!("config reload refused, the previous config keeps serving: {e}");
            }
            handle.shared.metrics.reload(false);
            false
        }
    }
}
