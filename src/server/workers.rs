//! Connection workers: one single-threaded runtime per core, each serving the connections
//! handed to it from accept to close.
//!
//! A connection's work — TLS, HTTP, the upstream exchange, the response — then stays on one
//! thread: no work stealing and no wake-ups across threads on the request path. Measured on
//! the 2-core bench machine, tokio's shared multi-threaded scheduler cost about a fifth more
//! CPU per proxied request than one thread alone (bench/README.md). The accept loop, reloads,
//! ACME and the admin port stay on the main runtime. Connections are dealt round-robin; one
//! never moves between workers.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tokio::runtime::Handle;

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl Workers {
    /// The process's workers, started on first use: one per available core.
    pub fn global() -> &'static Workers {
        static WORKERS: OnceLock<Workers> = OnceLock::new();
        WORKERS.get_or_init(|| {
            let n = std::thread::available_parallelism().map_or(1, usize::from);
            Workers::start(n)
        })
    }

    fn start(n: usize) -> Workers {
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a connection worker; using fewer");
                    break;
                }
            };
            let handle = rt.handle().clone();
            let started = std::thread::Builder::new()
                .name(format!("portcullis-worker-{i}"))
                .spawn(move || rt.block_on(std::future::pending::<()>()));
            match started {
                Ok(_) => handles.push(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a connection worker; using fewer");
                    break;
                }
            }
        }
        Workers {
            handles,
            next: AtomicUsize::new(0),
        }
    }

    /// Runs `f` on the next worker (on the caller's runtime if no worker could start).
    pub fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.handles.is_empty() {
            tokio::spawn(f);
            return;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_is_dealt_round_robin_to_single_threaded_workers() {
        let w = Workers::start(2);
        assert_eq!(w.handles.len(), 2);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let tx = tx.clone();
            w.spawn(async move {
                let flavor = Handle::current().runtime_flavor();
                let _ = tx.send((std::thread::current().name().map(str::to_owned), flavor));
            });
        }
        let mut names = Vec::new();
        for _ in 0..4 {
            let (name, flavor) = rx.recv().await.expect("a worker ran the task");
            assert_eq!(flavor, tokio::runtime::RuntimeFlavor::CurrentThread);
            names.push(name.unwrap_or_default());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "portcullis-worker-0",
                "portcullis-worker-0",
                "portcullis-worker-1",
                "portcullis-worker-1"
            ]
        );
    }
}
