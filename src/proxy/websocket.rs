//! WebSocket upgrades: allowed only on routes with `allow_websockets`, only from the route's
//! own origin (cross-site WebSocket hijacking), and then spliced both ways until either side
//! closes. No request timeout applies to an open WebSocket.

use hyper::upgrade::OnUpgrade;
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
    pub session: [u8; 16],
    /// Unix seconds: the session's end.
    pub expires: u64,
    pub signed_out: tokio::sync::broadcast::Receiver<[u8; 16]>,
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

async fn ended(ends: &mut Option<Ends>) -> &'static str {
    let Some(e) = ends else {
        return std::future::pending().await;
    };
    let left = e.expires.saturating_sub(crate::auth::session::now());
    let expiry = tokio::time::sleep(std::time::Duration::from_secs(left));
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            _ = &mut expiry => return "session expired: sign in again",
            r = e.signed_out.recv() => match r {
                Ok(id) if id == e.session => return "signed out: sign in again",
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return std::future::pending().await,
            },
        }
    }
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections,
/// until either side closes or (for a signed-in user) the session expires or signs out: then
/// the upstream side is dropped and the client gets a close frame (1008) saying why.
pub async fn splice(client: OnUpgrade, upstream: OnUpgrade, route: String, mut ends: Option<Ends>) {
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
        r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
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
