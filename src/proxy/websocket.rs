//! WebSocket upgrades: allowed only on routes with `allow_websockets`, only from the route's
//! own origin (cross-site WebSocket hijacking), and then spliced both ways until either side
//! closes. No request timeout applies to an open WebSocket.

use hyper::upgrade::OnUpgrade;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

use crate::policy::{evaluate, Facts, Identity, Outcome};
use crate::runtime::Runtime;

use hyper_util::rt::TokioIo;

use super::error::ProxyError;
use super::target::Target;
use crate::route::Route;

/// Checks an upgrade request that the policy already allowed.
pub fn check(
    route: &Route,
    https: bool,
    target: &Target,
    headers: &http::HeaderMap,
) -> Result<(), ProxyError> {
    if !route.allow_websockets {
        return Err(ProxyError::WebSocketNotAllowed);
    }
    let mut origins = headers.get_all(http::header::ORIGIN).iter();
    let (Some(origin), None) = (origins.next(), origins.next()) else {
        return Err(ProxyError::OriginNotAllowed);
    };
    let origin = origin.to_str().map_err(|_| ProxyError::OriginNotAllowed)?;
    if same_origin(origin, https, target) {
        Ok(())
    } else {
        Err(ProxyError::OriginNotAllowed)
    }
}

/// Is `origin` exactly this request's scheme, host and port?
pub fn same_origin(origin: &str, https: bool, target: &Target) -> bool {
    let Ok(u) = url::Url::parse(origin) else {
        return false;
    };
    let scheme = if https { "https" } else { "http" };
    let default = if https { 443 } else { 80 };
    u.scheme() == scheme
        && u.path() == "/"
        && u.query().is_none()
        && u.username().is_empty()
        && u.host_str()
            .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            == Some(target.host.clone())
        && u.port_or_known_default() == Some(target.port.unwrap_or(default))
}

/// What ends a signed-in user's WebSocket besides either side closing it.
pub struct Ends {
    /// The session id and its end (unix seconds), for a signed-in user.
    pub session: Option<([u8; 16], u64)>,
    pub signed_out: tokio::sync::broadcast::Receiver<[u8; 16]>,
    /// Notified when a reloaded policy no longer lets this socket's user in.
    pub revoked: Arc<Notify>,
    /// Keeps the socket in the registry while it is open.
    pub _registered: Registered,
}

/// What a reload needs to decide an open WebSocket again.
pub struct OpenSocket {
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
    pub ip: IpAddr,
    pub identity: Option<Arc<Identity>>,
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
            let allowed = rt.routes.find(&s.host, s.port, &s.path).is_some_and(|r| {
                let facts = Facts {
                    method: &http::Method::GET,
                    path: &s.path,
                    ip: Some(s.ip),
                };
                r.allow_websockets
                    && evaluate(&r.policy, s.identity.as_deref(), &facts).outcome == Outcome::Allow
            });
            if !allowed {
                s.revoke.notify_one();
                closed += 1;
            }
        }
        closed
    }
}

/// Close code sent when access ends (1008, policy violation), with a reason the page can show.
pub const CLOSE_POLICY: u16 = 1008;

/// A WebSocket close frame from the server (unmasked), reason cut to fit a control frame.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut f = Vec::with_capacity(4 + reason.len());
    f.push(0x88);
    f.push(u8::try_from(2 + reason.len()).unwrap_or(125));
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

async fn ended(e: &mut Ends) -> &'static str {
    let (session, expires) = match e.session {
        Some((id, exp)) => (Some(id), exp),
        None => (None, u64::MAX / 4),
    };
    let left = expires.saturating_sub(crate::auth::session::now());
    let expiry = tokio::time::sleep(std::time::Duration::from_secs(left));
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            _ = &mut expiry => return "session expired: sign in again",
            _ = e.revoked.notified() => return "access revoked by a policy change",
            r = e.signed_out.recv() => match r {
                Ok(id) if Some(id) == session => return "signed out: sign in again",
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return std::future::pending().await,
            },
        }
    }
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections,
/// until either side closes or (for a signed-in user) the session expires or signs out: then
/// the upstream side is dropped and the client gets a close frame (1008) saying why.
pub async fn splice(client: OnUpgrade, upstream: OnUpgrade, route: String, mut ends: Ends) {
    use tokio::io::AsyncWriteExt;
    let (c, u) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%route, error = %e, "websocket upgrade did not complete");
            return;
        }
    };
    let mut c = TokioIo::new(c);
    let mut u = TokioIo::new(u);
    let why = tokio::select! {
        // Buffers only while bytes move: an idle socket holds none (bench/README.md).
        r = super::relay::relay(&mut c, &mut u) => {
            match r {
                Ok((up, down)) => tracing::debug!(%route, up, down, "websocket closed"),
                Err(e) => tracing::debug!(%route, error = %e, "websocket ended"),
            }
            return;
        }
        why = ended(&mut ends) => why,
    };
    drop(u);
    tracing::info!(%route, reason = why, "closing websocket: access ended");
    let _ = c.write_all(&close_frame(CLOSE_POLICY, why)).await;
    let _ = c.shutdown().await;
}
