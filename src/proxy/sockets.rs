//! Every open WebSocket and TCP tunnel, with what a reload needs to decide it again: its route's host, port
//! and path, its client's address and its user. A reload (or a refreshed identity) that no
//! longer allows one notifies it, and it closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

use crate::policy::{evaluate, Facts, Identity, Outcome};
use crate::runtime::Runtime;

/// What a reload needs to decide an open WebSocket again.
pub struct OpenSocket {
    /// A tunnel of a TCP route (CONNECT) rather than a WebSocket.
    pub tcp: bool,
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
    pub ip: IpAddr,
    pub identity: Option<Arc<Identity>>,
    /// The upstreams serving it (`Target::describe`) and what its route sets in the headers
    /// it went with (`Route::forwarding`): a reload that moves the user to another `to` entry
    /// or changes those headers (a grant, the route's edits, the identity headers) closes it.
    pub upstream: String,
    pub forwarding: String,
    pub revoke: Arc<Notify>,
}

/// Every open WebSocket, so that a reload can close those its new policy refuses.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, OpenSocket>>,
}

/// Removes its socket from the registry when dropped.
pub struct Registered(Arc<Registry>, u64);

impl Registered {
    /// The socket's user after a refresh: a reload decides on this identity from now on.
    /// Returns whether the running config still lets the socket's user in.
    pub fn set_identity(&self, identity: Arc<Identity>, rt: &Runtime) -> bool {
        let Ok(mut m) = self.0.open.lock() else {
            return false;
        };
        m.get_mut(&self.1).is_some_and(|s| {
            s.identity = Some(identity);
            allowed(s, rt)
        })
    }
}

impl Registered {
    /// Does `rt` still let this socket's user in? Asked once the socket is registered, so a
    /// reload that swapped in between is not missed (after it, `recheck` sees the socket).
    pub fn allowed(&self, rt: &Runtime) -> bool {
        let Ok(m) = self.0.open.lock() else {
            return false;
        };
        m.get(&self.1).is_some_and(|s| allowed(s, rt))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.open.lock() {
            m.remove(&self.1);
        }
    }
}

impl Registry {
    pub fn add(self: &Arc<Self>, s: OpenSocket) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.open.lock() {
            m.insert(id, s);
        }
        Registered(self.clone(), id)
    }

    /// Decides every open socket again under `rt`; closes the refused ones. Returns how many.
    pub fn recheck(&self, rt: &Runtime) -> usize {
        let Ok(m) = self.open.lock() else { return 0 };
        let mut closed = 0;
        for s in m.values() {
            if !allowed(s, rt) {
                s.revoke.notify_one();
                closed += 1;
            }
        }
        closed
    }
}

/// Does `rt` still let this socket's user in as it was let in (its route, with
/// `allow_websockets`, its policy for the socket's identity, the same upstreams and the same
/// grant)?
fn allowed(s: &OpenSocket, rt: &Runtime) -> bool {
    let route = if s.tcp {
        s.port.and_then(|p| rt.routes.find_tcp(&s.host, p))
    } else {
        rt.routes
            .find(&s.host, s.port, &s.path)
            .filter(|r| r.allow_websockets)
    };
    route.is_some_and(|r| {
        let facts = Facts {
            method: if s.tcp {
                &http::Method::CONNECT
            } else {
                &http::Method::GET
            },
            path: &s.path,
            ip: Some(s.ip),
        };
        let d = evaluate(&r.policy, s.identity.as_deref(), &facts);
        d.outcome == Outcome::Allow
            && r.target(d.target).describe() == s.upstream
            && r.forwarding(d.grant) == s.forwarding
    })
}
