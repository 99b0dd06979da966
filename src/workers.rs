//! Connection workers: one single-threaded runtime per core, each serving the connections
//! handed to it from accept to close.
//!
//! A connection's work — TLS, HTTP, the upstream exchange, the response — then stays on one
//! thread: no work stealing and no wake-ups across threads on the request path. Measured on
//! the 2-core bench machine, tokio's shared multi-threaded scheduler cost about a fifth more
//! CPU per proxied request than one thread alone (docs/performance.md). Each worker accepts its
//! own connections from a socket of its own on the shared port (`listener::bind`); where
//! there is only one socket, the main runtime accepts and deals connections round-robin.
//! Reloads, ACME and the admin port stay on the main runtime. A connection never moves
//! between workers.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tokio::runtime::Handle;

thread_local! {
    /// Which worker this thread is, if it is one.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// How many workers the process runs (or would): one per core available when first asked,
/// fixed from then on so per-worker state always has a slot for every worker.
pub fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// The worker running the calling thread, or `None` off the workers (the main runtime).
///
/// Per-worker state is indexed by it: an upstream connection is registered with the I/O
/// driver of the worker that opened it, so it must be reused by that worker only — used
/// from another, each of its wake-ups would cross threads and wait for the first worker
/// to poll its driver.
pub fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// One `T` per worker, plus one for threads off the workers: state a worker keeps to itself
/// (pooled upstream connections, opened sessions) without sharing a lock or a cache line
/// with the other workers.
pub struct PerWorker<T> {
    slots: Box<[T]>,
}

impl<T: Default> Default for PerWorker<T> {
    fn default() -> Self {
        PerWorker::new(count())
    }
}

impl<T: Default> PerWorker<T> {
    fn new(workers: usize) -> Self {
        PerWorker {
            slots: (0..=workers).map(|_| T::default()).collect(),
        }
    }
}

impl<T> PerWorker<T> {
    /// The calling thread's: its worker's, or the one shared off the workers.
    pub fn get(&self) -> &T {
        let i = current().map_or(0, |i| i + 1);
        // Every worker has its slot (`count()` is fixed); were one missing, it would share
        // the last one, which is only slower: what is shared between threads is `Sync`.
        &self.slots[i.min(self.slots.len() - 1)]
    }
}

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl Workers {
    /// The process's workers, started on first use: one per available core.
    pub fn global() -> &'static Workers {
        static WORKERS: OnceLock<Workers> = OnceLock::new();
        WORKERS.get_or_init(|| Workers::start(count()))
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
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(i)));
                    rt.block_on(std::future::pending::<()>())
                });
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

    /// How many workers are running.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// True if no worker could start.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `f` on worker `i` (on the caller's runtime if there is no such worker).
    pub fn spawn_on<F>(&self, i: usize, f: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self.handles.get(i) {
            Some(h) => h.spawn(f),
            None => tokio::spawn(f),
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
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((name, flavor, current()));
            });
        }
        let mut names = Vec::new();
        for _ in 0..4 {
            let (name, flavor, index) = rx.recv().await.expect("a worker ran the task");
            assert_eq!(flavor, tokio::runtime::RuntimeFlavor::CurrentThread);
            let name = name.unwrap_or_default();
            assert_eq!(
                Some(name.as_str()),
                index.map(|i| format!("portcullis-worker-{i}")).as_deref()
            );
            names.push(name);
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
        assert_eq!(current(), None, "the test's own thread is not a worker");
    }

    #[tokio::test]
    async fn each_worker_gets_its_own_slot() {
        let w = Workers::start(2);
        let slots = std::sync::Arc::new(PerWorker::<AtomicUsize>::new(2));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let (tx, slots) = (tx.clone(), slots.clone());
            w.spawn(async move {
                let n = slots.get().fetch_add(1, Ordering::Relaxed);
                let _ = tx.send((current(), n));
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(rx.recv().await.expect("a worker ran the task"));
        }
        seen.sort();
        // Each worker counted its own two tasks; the test's thread has a slot of its own.
        assert_eq!(
            seen,
            [(Some(0), 0), (Some(0), 1), (Some(1), 0), (Some(1), 1)]
        );
        assert_eq!(slots.get().load(Ordering::Relaxed), 0);
    }
}
