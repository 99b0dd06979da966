//! TCP routes: an HTTP/1.1 `CONNECT host:port` on the listener is decided by the policy of
//! the TCP route (`from: tcp+https://host:port`) that names exactly that host and port, then
//! its bytes are relayed to the route's `tcp://` target until either side closes or access
//! ends (sign-out, expiry, a reload that refuses it). No route, no tunnel: this is not an open
//! proxy. `portcullis tcp` is the client (`crate::tunnel_client`).

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

use super::error::{page, ProxyError};
use super::sockets::OpenSocket;
use super::state::{ConnInfo, Shared};
use super::{decide, websocket, Body};
use crate::auth::session::Session;
use crate::clock::now;
use crate::http::target::{parse_host, Target};
use crate::policy::eval::Permitted;
use crate::policy::{self, Facts, Identity};
use crate::route::Route;
use crate::runtime::Runtime;

/// The header `portcullis tcp` sends its session in: `Proxy-Authorization: Portcullis TOKEN`.
pub const SCHEME: &str = "Portcullis ";
/// The sign-in's short-lived code and PKCE verifier: `Proxy-Authorization: Portcullis-Code CODE
/// VERIFIER`, answered (when the policy allows) with a token to keep.
pub const CODE_SCHEME: &str = "Portcullis-Code ";
/// A session for `portcullis tcp` to keep (after a sign-in or a refresh), on the `200` that
/// opens a tunnel.
pub const FRESH_TOKEN: &str = "portcullis-session";
/// How long the target may take to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the access log and the metrics learn about a CONNECT.
pub struct Logged<'r> {
    pub target: Option<Target>,
    pub route: Option<&'r Route>,
    pub user: Option<Arc<Identity>>,
    pub decision: &'static str,
}

/// Answers a CONNECT: `200` and a relay, or the error page that says why not.
pub async fn connect<'r>(
    rt: &'r Arc<Runtime>,
    shared: &Arc<Shared>,
    conn: &Arc<ConnInfo>,
    mut req: Request<Incoming>,
    log: &mut Logged<'r>,
) -> Result<Response<Body>, ProxyError> {
    if req.version() != Version::HTTP_11 {
        return Err(ProxyError::BadRequest(
            "TCP routes take an HTTP/1.1 CONNECT".into(),
        ));
    }
    let target = authority(&req)?;
    log.target = Some(target.clone());
    if conn.sni.as_ref().is_some_and(|sni| *sni != target.host) {
        return Err(ProxyError::Misdirected);
    }
    let port = target.port.ok_or(ProxyError::NotFound)?;
    let route = rt
        .routes
        .find_tcp(&target.host, port)
        .ok_or(ProxyError::NotFound)?;
    log.route = Some(route);

    let uses_identity =
        route.policy.uses_identity || route.shadow.as_ref().is_some_and(|s| s.uses_identity);
    let (session, fresh) = if uses_identity {
        session(rt, shared, &target.host, req.headers()).await
    } else {
        (None, None)
    };
    let identity = session.as_ref().map(|s| s.identity.clone());
    log.user.clone_from(&identity);
    let facts = Facts {
        method: &Method::CONNECT,
        path: "/",
        ip: Some(conn.peer.ip()),
    };
    let shadow = route
        .shadow
        .as_ref()
        .map(|p| policy::evaluate(p, identity.as_deref(), &facts));
    let verdict = policy::authorize(&route.policy, identity, &facts);
    if let Some(shadow) = shadow {
        super::shadow::compare(
            shared,
            route,
            &verdict,
            &shadow,
            &facts,
            log.user.as_deref(),
        );
    }
    // A tunnel is never a navigation: no redirect to the IdP, but a 407 that the client
    // answers by signing in.
    let asked = decide::Asked {
        navigation: false,
        sign_in: rt.auth.oidc.is_some(),
    };
    let next = decide::decide(verdict, asked);
    log.decision = next.label();
    let permitted = match next {
        decide::Next::Forward(p) => p,
        decide::Next::SignIn | decide::Next::Refuse(ProxyError::Unauthenticated) => {
            return Err(ProxyError::TunnelSignIn)
        }
        decide::Next::Refuse(e) => return Err(e),
    };

    // Listening for its end before the target is reached: a sign-out meanwhile is heard.
    let socket = OpenSocket {
        tcp: true,
        host: target.host.clone(),
        port: target.port,
        path: "/".into(),
        ip: conn.peer.ip(),
        identity: permitted.identity.clone(),
        upstream: route.target(permitted.target).describe(),
        forwarding: route.forwarding(permitted.grant),
        revoke: Arc::default(),
    };
    let ends = websocket::Ends::listen(shared, session, socket);
    let upstream = open(route, &permitted).await?;
    match ends.gone() {
        Some(websocket::Gone::SignedOut) => return Err(ProxyError::TunnelSignIn),
        Some(websocket::Gone::Refused) => return Err(ProxyError::policy_changed()),
        None => {}
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let name = route.name.clone();
    let guard = shared.metrics.websocket_guard();
    // The tunnel keeps its connection counted under the connection caps.
    let held = conn.clone();
    tokio::spawn(async move {
        let _open = (guard, held);
        match on_upgrade.await {
            Ok(client) => relay(TokioIo::new(client), upstream, name, ends).await,
            Err(e) => tracing::debug!(route = %name, error = %e, "tunnel did not open"),
        }
    });
    let mut resp = page(StatusCode::OK, "text/plain", String::new());
    // A 2xx to CONNECT has no body (RFC 9110 §9.3.6): no framing headers either.
    resp.headers_mut().remove(header::CONTENT_TYPE);
    if let Some(token) = fresh {
        resp.headers_mut().insert(FRESH_TOKEN, token);
    }
    Ok(resp)
}

/// The CONNECT's `host:port`, checked as a request's Host is (and equal to its Host, if any).
fn authority(req: &Request<Incoming>) -> Result<Target, ProxyError> {
    let bad = |why: &str| ProxyError::BadRequest(why.into());
    let a = req
        .uri()
        .authority()
        .filter(|_| req.uri().scheme().is_none() && req.uri().path_and_query().is_none())
        .ok_or_else(|| bad("CONNECT takes host:port"))?;
    let mut hosts = req.headers().get_all(header::HOST).iter();
    if let Some(h) = hosts.next() {
        if hosts.next().is_some() || !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
            return Err(bad("Host differs from the CONNECT target"));
        }
    }
    let (host, port) = parse_host(a.as_str()).map_err(|_| bad("malformed CONNECT target"))?;
    if port.is_none() {
        return Err(bad("CONNECT takes host:port"));
    }
    Ok(Target {
        host,
        port,
        authority: a.as_str().to_string(),
        path: "/".into(),
        query: None,
    })
}

/// The session: `portcullis tcp`'s token, or the code of its sign-in with the PKCE verifier
/// (never a cookie); refreshed first when its ID token has expired. The client gets a token
/// to keep when it came with a code or its session was refreshed.
async fn session(
    rt: &Runtime,
    shared: &Shared,
    host: &str,
    headers: &http::HeaderMap,
) -> (Option<Arc<Session>>, Option<HeaderValue>) {
    let auth = headers
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = auth.and_then(|v| v.strip_prefix(SCHEME));
    let code = auth
        .and_then(|v| v.strip_prefix(CODE_SCHEME))
        .and_then(|v| v.trim().split_once(' '));
    let (s, keep) = match (token, code) {
        (Some(t), _) => (rt.auth.open_cli(&*shared.store, host, t.trim()), false),
        (None, Some((code, verifier))) => (
            rt.auth
                .open_cli_code(&*shared.store, host, code, verifier.trim()),
            true,
        ),
        // No cookie: a browser sends no CONNECT, and with `cookie_domain` a cookie would open
        // the TCP routes of every host under it.
        (None, None) => (None, false),
    };
    let Some(s) = s else { return (None, None) };
    let sealed = |s: &Session| {
        rt.auth
            .seal_cli(host, s)
            .and_then(|t| HeaderValue::try_from(t).ok())
    };
    if s.id_token_exp > now() || s.refresh_token.is_none() {
        let fresh = if keep { sealed(&s) } else { None };
        return (Some(s), fresh);
    }
    let Some(oidc) = rt.auth.oidc.as_ref() else {
        return (None, None);
    };
    match Box::pin(shared.refreshes.refresh(oidc, &s)).await {
        Some(fresh) => {
            let kept = (token.is_some() || keep)
                .then(|| sealed(&fresh.session))
                .flatten();
            (Some(Arc::new(fresh.session)), kept)
        }
        None => (None, None),
    }
}

/// A connection to the target the policy chose: its upstreams in order, each given
/// [`CONNECT_TIMEOUT`]. Only a [`Permitted`] (which only the policy makes) opens one.
async fn open(route: &Route, permitted: &Permitted) -> Result<TcpStream, ProxyError> {
    for u in &route.target(permitted.target).upstreams {
        let addr = u.authority.as_str();
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => {
                tracing::warn!(route = %route.name, upstream = addr, error = %e, "TCP target refused the connection")
            }
            Err(_) => {
                tracing::warn!(route = %route.name, upstream = addr, "TCP target did not answer in time")
            }
        }
    }
    Err(ProxyError::UpstreamUnavailable)
}

/// Relays until either side closes, or closes both when access ends.
async fn relay(
    mut client: TokioIo<hyper::upgrade::Upgraded>,
    mut upstream: TcpStream,
    route: String,
    mut ends: websocket::Ends,
) {
    let opened = std::time::Instant::now();
    let user = ends.session.as_ref().map(|s| {
        s.identity
            .email
            .clone()
            .unwrap_or_else(|| s.identity.sub.clone())
    });
    let user = user.as_deref().unwrap_or("-");
    let why = tokio::select! {
        r = super::relay::relay(&mut client, &mut upstream) => {
            let seconds = opened.elapsed().as_secs();
            match r {
                Ok((up, down)) => tracing::info!(%route, user, seconds, up, down, "tunnel closed"),
                Err(e) => tracing::info!(%route, user, seconds, error = %e, "tunnel ended"),
            }
            return;
        }
        why = websocket::ended(&mut ends) => why,
    };
    tracing::info!(%route, user, seconds = opened.elapsed().as_secs(), reason = why, "closing tunnel: access ended");
    drop(upstream);
    drop(client);
}
