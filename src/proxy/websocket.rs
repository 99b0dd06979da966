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

/// Copies bytes both ways between the client's and the upstream's upgraded connections.
pub async fn splice(client: OnUpgrade, upstream: OnUpgrade, route: String) {
    let (c, u) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%route, error = %e, "websocket upgrade did not complete");
            return;
        }
    };
    let mut c = TokioIo::new(c);
    let mut u = TokioIo::new(u);
    match tokio::io::copy_bidirectional(&mut c, &mut u).await {
        Ok((up, down)) => tracing::debug!(%route, up, down, "websocket closed"),
        Err(e) => tracing::debug!(%route, error = %e, "websocket ended"),
    }
}
