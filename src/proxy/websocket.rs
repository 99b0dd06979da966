//! WebSocket upgrades: allowed only on routes with `allow_websockets`, only from the route's
//! own origin (cross-site WebSocket hijacking), and then spliced both ways until either side
//! closes. No request timeout applies to an open WebSocket.

use hyper::upgrade::OnUpgrade;
use std::sync::Arc;
use tokio::sync::Notify;

use crate::auth::session::Session;

use super::sockets::{OpenSocket, Registered};
use super::state::Shared;

use hyper_util::rt::TokioIo;

use super::error::ProxyError;
use crate::http::target::Target;
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
    /// A signed-in user's session: it ends at its `expires`, and when its ID token expires it
    /// is refreshed (as an HTTP request's would be) or the socket ends.
    pub session: Option<Arc<Session>>,
    /// The running config (its IdP, to refresh with; its policies, to decide a refreshed
    /// identity again), the shared refreshes and the revocation store.
    pub shared: Arc<Shared>,
    pub signed_out: tokio::sync::broadcast::Receiver<[u8; 16]>,
    /// Notified when a reloaded policy no longer lets this socket's user in.
    pub revoked: Arc<Notify>,
    /// Keeps the socket in the registry while it is open.
    pub registered: Registered,
}

/// Why a socket's access ended before it opened: in the moment between its decision and its
/// registration.
pub enum Gone {
    SignedOut,
    Refused,
}

impl Ends {
    /// Listens for the end of a socket about to open: subscribed to sign-outs and registered
    /// for reloads before it goes upstream, so that one made meanwhile is heard, not missed.
    pub fn listen(shared: &Arc<Shared>, session: Option<Arc<Session>>, socket: OpenSocket) -> Ends {
        Ends {
            session,
            shared: shared.clone(),
            signed_out: shared.signed_out.subscribe(),
            revoked: socket.revoke.clone(),
            registered: shared.sockets.add(socket),
        }
    }

    /// Whether access ended between the decision and [`Ends::listen`]: a sign-out recorded,
    /// or a reload that refuses the socket (after it, the reload's recheck sees the socket).
    pub fn gone(&self) -> Option<Gone> {
        if self
            .session
            .as_ref()
            .is_some_and(|s| self.shared.store.is_revoked(&s.id))
        {
            return Some(Gone::SignedOut);
        }
        (!self.registered.allowed(&self.shared.runtime.load())).then_some(Gone::Refused)
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

const EXPIRED: &str = "session expired: sign in again";
const SIGNED_OUT: &str = "signed out: sign in again";
const POLICY: &str = super::error::POLICY_CHANGED;

/// Waits until the socket's access ends, and says why. A session whose ID token expires is
/// refreshed when it has a refresh token (as a request's would be, and sharing the refresh
/// with the browser's requests): a user disabled at the IdP loses the socket then, not at the
/// session's end. A sign-out broadcast this socket missed (it lagged) is looked up in the
/// revocation store instead.
pub(super) async fn ended(e: &mut Ends) -> &'static str {
    loop {
        let now = crate::clock::now();
        let (id, expires, refresh_at) = match &e.session {
            Some(s) => {
                let refreshable = s.refresh_token.is_some();
                (
                    Some(s.id),
                    s.expires,
                    refreshable
                        .then_some(s.id_token_exp)
                        .filter(|&t| t < s.expires),
                )
            }
            None => (None, u64::MAX / 4, None),
        };
        let wake = refresh_at.unwrap_or(expires).min(expires);
        let timer = tokio::time::sleep(std::time::Duration::from_secs(wake.saturating_sub(now)));
        tokio::select! {
            _ = timer => {
                let Some(s) = e.session.clone() else { continue };
                if crate::clock::now() >= s.expires {
                    return EXPIRED;
                }
                // A signed-out session is never refreshed (whatever the broadcast did).
                if e.shared.store.is_revoked(&s.id) {
                    return SIGNED_OUT;
                }
                let rt = e.shared.runtime.load_full();
                let Some(oidc) = rt.auth.oidc.as_ref() else { return EXPIRED };
                let Some(fresh) = e.shared.refreshes.refresh(oidc, &s).await else {
                    return EXPIRED;
                };
                if fresh.session.id_token_exp <= crate::clock::now() {
                    // The IdP gave no ID token valid now (or a clock far off): ending the
                    // socket beats asking again in a loop.
                    return EXPIRED;
                }
                let identity = fresh.session.identity.clone();
                e.session = Some(Arc::new(fresh.session));
                if !e.registered.set_identity(identity, &rt) {
                    return POLICY;
                }
            }
            _ = e.revoked.notified() => return POLICY,
            r = e.signed_out.recv() => match r {
                Ok(signed_out) if Some(signed_out) == id => return SIGNED_OUT,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if id.is_some_and(|id| e.shared.store.is_revoked(&id)) {
                        return SIGNED_OUT;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return std::future::pending().await
                }
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
        // Buffers only while bytes move: an idle socket holds none (docs/performance.md).
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
