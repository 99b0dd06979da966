//! The one request pipeline. `handle` (outer) turns every error into a page and writes the
//! access log; `inner` is a `?` chain: target → route → session → policy → forward.

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::error::{page, ProxyError};
use super::forward::{self, UpBody};
use super::headers::{self, Forwarding};
use super::target;
use super::{websocket, Body};
use crate::policy::{self, Facts, Refusal};
use crate::route::{PathMatch, Route};
use crate::runtime::Runtime;

/// What the listener knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The TLS SNI name, lower-case; `None` on plain HTTP or when the client sent none.
    pub sni: Option<String>,
    pub https: bool,
}

/// State shared by every connection.
pub struct Shared {
    pub runtime: arc_swap::ArcSwap<Runtime>,
}

/// Fields of the access-log line, filled in as the request goes.
#[derive(Default)]
struct Log {
    route: Option<String>,
    host: String,
    path: String,
    user: Option<String>,
    decision: &'static str,
}

/// Outer handler: never fails; one access-log event per request.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let rt = shared.runtime.load_full();
    let method = req.method().clone();
    let json = wants_json(req.headers());
    let mut log = Log {
        decision: "-",
        ..Log::default()
    };
    let resp = match inner(&rt, &conn, req, &mut log).await {
        Ok(r) => r,
        Err(e) => {
            if matches!(
                e,
                ProxyError::UpstreamUnavailable | ProxyError::UpstreamTimeout
            ) {
                tracing::debug!(code = e.code(), "upstream error page");
            }
            e.into_response(json)
        }
    };
    tracing::info!(
        target: "portcullis::access",
        route = log.route.as_deref().unwrap_or("-"),
        method = %method,
        host = %log.host,
        path = %log.path,
        status = resp.status().as_u16(),
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        user = log.user.as_deref().unwrap_or("-"),
        decision = log.decision,
        peer = %conn.peer.ip(),
    );
    Ok(resp)
}

fn wants_json(h: &http::HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

/// Paths Portcullis answers itself on every route host; never forwarded.
fn is_own_path(path: &str) -> bool {
    path == "/.portcullis"
        || path.starts_with("/.portcullis/")
        || path.starts_with("/.well-known/portcullis/")
}

async fn inner(
    rt: &Arc<Runtime>,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    log: &mut Log,
) -> Result<Response<Body>, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    if req.uri().path() == "*" && req.uri().authority().is_none() {
        if req.method() == Method::OPTIONS {
            let mut r = page(StatusCode::NO_CONTENT, "text/plain", String::new());
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return Ok(r);
        }
        return Err(ProxyError::BadRequest(
            "`*` is only a target for OPTIONS".into(),
        ));
    }
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "both Transfer-Encoding and Content-Length".into(),
        ));
    }
    let target = target::parse(req.method(), req.uri(), h)
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    log.host.clone_from(&target.host);
    log.path.clone_from(&target.path);
    if let Some(sni) = &conn.sni {
        if *sni != target.host {
            return Err(ProxyError::Misdirected);
        }
    }
    if is_own_path(&target.path) {
        // Sign-in endpoints arrive with OpenID Connect; until then these paths exist on
        // every route host but serve nothing, and are never forwarded.
        return Err(ProxyError::NotFound);
    }
    let route = rt
        .routes
        .find(&target.host, target.port, &target.path)
        .ok_or(ProxyError::NotFound)?;
    log.route = Some(route.name.clone());

    let websocket = headers::is_websocket_upgrade(req.method(), req.headers());
    let identity = None;
    let facts = Facts {
        method: req.method(),
        path: &target.path,
        ip: Some(conn.peer.ip()),
    };
    let permitted = match policy::authorize(&route.policy, identity, &facts) {
        Ok(p) => {
            log.decision = "allow";
            p
        }
        Err(Refusal::Unauthenticated) => {
            log.decision = "unauthenticated";
            return Err(ProxyError::Unauthenticated);
        }
        Err(Refusal::Denied {
            identity, reason, ..
        }) => {
            log.decision = "deny";
            return Err(ProxyError::Forbidden {
                who: identity.and_then(|i| i.email.clone()),
                reason: reason.to_string(),
            });
        }
    };
    if websocket {
        websocket::check(route, conn.https, &target, req.headers())?;
    }
    let on_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let path = rewrite(route, &target.path);
    let pq = target.path_and_query(&path);
    let host_header = if route.preserve_host_header {
        HeaderValue::from_str(&target.authority)
            .map_err(|_| ProxyError::BadRequest("malformed Host".into()))?
    } else {
        route.upstreams[0].host_header.clone()
    };
    parts.headers = headers::request_headers(
        &parts.headers,
        &Forwarding {
            peer_ip: conn.peer.ip(),
            https: conn.https,
            authority: &target.authority,
            host_header,
            websocket,
            cookie_name: &rt.settings.cookie.name,
            owned: &route.owned_headers,
            remove: &route.remove_request_headers,
            set: &route.set_request_headers,
        },
    );
    let body = if websocket {
        UpBody::empty()
    } else {
        UpBody::new(body)
    };
    let mut resp = forward::send(route, &permitted, parts, &pq, body).await?;

    let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if upgraded {
        let Some(client_upgrade) = on_upgrade else {
            // The upstream switched protocols on a request that asked for no WebSocket.
            return Err(ProxyError::UpstreamUnavailable);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(websocket::splice(
            client_upgrade,
            upstream_upgrade,
            route.name.clone(),
        ));
    }
    let (mut rparts, rbody) = resp.into_parts();
    headers::response_headers(&mut rparts.headers, upgraded);
    let body = match route.idle_timeout {
        Some(idle) if !upgraded => forward::IdleBody::new(rbody, idle).boxed(),
        _ => rbody.map_err(Into::into).boxed(),
    };
    Ok(Response::from_parts(rparts, body))
}

/// Applies `prefix_rewrite`: the matched prefix (or `/`) is replaced.
fn rewrite(route: &Route, path: &str) -> String {
    let Some(rw) = &route.prefix_rewrite else {
        return path.to_string();
    };
    let prefix = match &route.path {
        PathMatch::Prefix(p) => p.as_str(),
        _ => "/",
    };
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    match (rw.ends_with('/'), rest.starts_with('/')) {
        (true, true) => format!("{rw}{}", &rest[1..]),
        (false, false) if !rest.is_empty() && prefix.ends_with('/') => format!("{rw}/{rest}"),
        _ => format!("{rw}{rest}"),
    }
}
