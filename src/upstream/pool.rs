//! Idle keep-alive connections, per upstream and per connection worker.

use foldhash::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use crate::http::h1::{self};
use crate::workers::PerWorker;

use super::conn::*;

/// Keep-alive connections waiting for their next request, by upstream — one set per
/// connection worker (`server::workers`). A connection is registered with the I/O driver of
/// the worker that opened it; reused from another worker, each of its wake-ups would cross
/// threads and wait until the first worker next polls its driver. So a worker reuses only
/// the connections it opened.
#[derive(Default)]
pub(super) struct Pool {
    pub(super) idle: PerWorker<Mutex<HashMap<Arc<str>, Vec<Idle>>>>,
}

pub(super) struct Idle {
    pub(super) conn: UpConn,
    /// When it stops being reused.
    pub(super) until: Instant,
}

/// Idle connections kept per upstream and worker.
pub(super) const IDLE_MAX: usize = 128;
/// An idle connection older than this is closed rather than reused.
pub(super) const IDLE_FOR: Duration = Duration::from_secs(60);
/// How long before an upstream's announced keep-alive timeout (`Keep-Alive: timeout=N`) its
/// idle connection stops being reused: a request sent as the upstream closes would be lost
/// (only bodiless idempotent ones are retried). Node.js announces 5 s by default.
pub(super) const CLOSE_MARGIN: Duration = Duration::from_secs(1);

/// How long an idle connection may be reused after a response with these headers: until a
/// second before the upstream said it would close it, at most [`IDLE_FOR`]. Zero: not at all.
pub(super) fn reuse_for(h: &http::HeaderMap) -> Duration {
    h1::keep_alive_timeout(h).map_or(IDLE_FOR, |secs| {
        Duration::from_secs(secs)
            .saturating_sub(CLOSE_MARGIN)
            .min(IDLE_FOR)
    })
}

impl Pool {
    pub(super) fn put(&self, key: Arc<str>, conn: UpConn, reuse_for: Duration) {
        if let Ok(mut idle) = self.idle.get().lock() {
            let list = idle.entry(key).or_default();
            if list.len() < IDLE_MAX {
                list.push(Idle {
                    conn,
                    until: Instant::now() + reuse_for,
                });
            }
        }
    }

    pub(super) fn take(&self, key: &str) -> Option<UpConn> {
        let mut idle = self.idle.get().lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some(i) = list.pop() {
            if Instant::now() < i.until {
                return Some(i.conn);
            }
        }
        None
    }
}
