//! Reloads: the new config built whole before it is swapped in ([`reload`], on SIGHUP and on a
//! change), and the watcher that notices changes.
//!
//! Reload when the config file (or a file it names) changes. Polling, not inotify: it sees
//! every way editors and orchestrators replace files (rename over, truncate-and-write, a
//! Kubernetes ConfigMap's symlink swap, a bind-mounted directory) the same way, by content.
//! A change is taken only once the content has stayed the same for a moment, so a
//! half-written file is not read; and a file that does not parse is refused anyway, with the
//! old config serving on.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Handle;
use crate::config::ProcessEnv;
use crate::runtime::Runtime;

/// How often files are looked at.
pub const POLL: Duration = Duration::from_millis(500);

fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in paths {
        p.hash(&mut h);
        match std::fs::read(p) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.kind().hash(&mut h),
        }
    }
    h.finish()
}

fn watched(handle: &Handle, config: &Path) -> Vec<PathBuf> {
    let mut v = vec![config.to_path_buf()];
    v.extend(handle.shared.runtime.load().files.iter().cloned());
    v
}

/// Takes its first look at the files now (a change from this moment on is seen), then runs
/// until the process stops.
pub fn run<'a>(handle: &'a Handle, config: &'a Path) -> impl std::future::Future<Output = ()> + 'a {
    let paths = watched(handle, config);
    let seen = fingerprint(&paths);
    watch(handle, config, paths, seen)
}

async fn watch(handle: &Handle, config: &Path, mut paths: Vec<PathBuf>, mut seen: u64) {
    loop {
        tokio::time::sleep(POLL).await;
        let now = fingerprint(&paths);
        if now == seen {
            continue;
        }
        // Let the writer finish: take the content once it is unchanged for one more period.
        tokio::time::sleep(POLL).await;
        let settled = fingerprint(&paths);
        if settled != now {
            continue;
        }
        seen = settled;
        tracing::info!(config = %config.display(), "config or a file it names changed");
        if reload(handle, config) {
            paths = watched(handle, config);
            seen = fingerprint(&paths);
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
            if old.settings.session_store != rt.settings.session_store
                || old.settings.data_dir != rt.settings.data_dir
            {
                tracing::warn!(
                    "session_store or data_dir changed: it takes effect at the next restart"
                );
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
