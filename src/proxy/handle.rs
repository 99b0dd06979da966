//! The one request pipeline. `handle` (outer) turns every error into a page, adds the
//! cookies a request earned, and writes the access log; `inner` is a `?` chain:
//! target → route → session → policy → forward.

use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use super::error::{page, ProxyError};
use super::headers::{self, Forwarding};
use super::state::{ConnInfo, Shared};
use super::{decide, portal, shadow, tunnel};
use super::{websocket, Body};
use crate::auth::session::Session;
use crate::auth::SetCookies;
use crate::clock::now;
use crate::http::target::{self, Target};
use crate::policy::{self, Facts, Identity};
use crate::route::{PathMatch, Route};
use crate::runtime::Runtime;
use crate::upstream::{self, IdleBody, UpBody};

/// What a request accumulates on its way: access-log fields and cookies to set. It borrows
/// or shares what it logs (no copy per request).
struct Ctx<'r> {
    route: Option<&'r Route>,
    target: Option<Target>,
    user: Option<Arc<Identity>>,
    decision: &'static str,
    cookies: SetCookies,
}

impl Ctx<'_> {
    /// Who the access log names: the email, else the subject.
    fn user(&self) -> &str {
        self.user
            .as_deref()
            .map_or("-", |i| i.email.as_deref().unwrap_or(&i.sub))
    }
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
    let mut cx = Ctx {
        route: None,
        target: None,
        user: None,
        decision: "-",
        cookies: SetCookies::default(),
    };
    let mut resp = match inner(&rt, &shared, &conn, req, &mut cx).await {
        Ok(r) => r,
        Err(e) => e.into_response(json),
    };
    for c in cx.cookies.drain(..) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    if let Some(v) = &rt.hsts {
        // Browsers only honour it over https; an upstream's own policy is left as it is.
        resp.headers_mut()
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| v.clone());
    }
    shared.metrics.request(
        cx.route.map(|r| r.name.as_str()),
        &method,
        resp.status().as_u16(),
        start.elapsed(),
        cx.decision,
    );

    tracing::info!(
        target: "portcullis::access",
        route = cx.route.map_or("-", |r| r.name.as_str()),
        method = %method,
        host = %cx.target.as_ref().map_or("", |t| t.host.as_str()),
        path = %cx.target.as_ref().map_or("", |t| t.path.as_str()),
        status = resp.status().as_u16(),
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        bytes = http_body::Body::size_hint(resp.body()).exact().map_or_else(|| "-".to_string(), |n| n.to_string()),

        user = cx.user(),
        decision = cx.decision,
        peer = %conn.peer.ip(),
    );
    Ok(resp)
}

fn wants_json(h: &http::HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

async fn inner<'r>(
    rt: &'r Arc<Runtime>,
    shared: &Arc<Shared>,
    conn: &Arc<ConnInfo>,
    mut req: Request<Incoming>,
    cx: &mut Ctx<'r>,
) -> Result<Response<Body>, ProxyError> {
    if req.method() == Method::CONNECT {
        let mut log = tunnel::Logged {
            target: None,
            route: None,
            user: None,
            decision: "-",
        };
        // Boxed: a path taken rarely (see `portal::serve` below).
        let r = Box::pin(tunnel::connect(rt, shared, conn, req, &mut log)).await;
        (cx.target, cx.route, cx.user, cx.decision) =
            (log.target, log.route, log.user, log.decision);
        return r;
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
    let target: &Target = cx.target.insert(target);
    if let Some(sni) = &conn.sni {
        if *sni != target.host {
            return Err(ProxyError::Misdirected);
        }
    }
    if crate::paths::is_own(&target.path) {
        // Boxed, as every path taken rarely here: a future is as large as its largest await,
        // and the request future is moved whole into its connection (docs/performance.md).
        return Box::pin(portal::serve(
            rt,
            shared,
            conn.https,
            target,
            &req,
            &mut cx.cookies,
        ))
        .await;
    }
    let route = rt
        .routes
        .find(&target.host, target.port, &target.path)
        .ok_or(ProxyError::NotFound)?;
    cx.route = Some(route);

    let websocket = crate::http::hop::is_websocket_upgrade(req.method(), req.headers());
    // Public routes never look at sessions (and never pay for them).
    let uses_identity =
        route.policy.uses_identity || route.shadow.as_ref().is_some_and(|s| s.uses_identity);
    let session = if uses_identity {
        session(rt, shared, target, &req, &mut cx.cookies).await
    } else {
        None
    };

    let (sid, identity) = match &session {
        Some(s) => (Some(s.id), Some(s.identity.clone())),
        None => (None, None),
    };
    cx.user.clone_from(&identity);
    // The scheme the browser sees is the route's (`from`), also behind a TLS terminator with
    // `insecure_server`: it decides the WebSocket origin, X-Forwarded-Proto and the assertion's `iss`.
    let facts = Facts {
        method: req.method(),
        path: &target.path,
        ip: Some(conn.peer.ip()),
    };
    let asked = decide::Asked {
        navigation: !websocket && decide::is_navigation(&req),
        sign_in: rt.auth.oidc.is_some(),
    };
    let shadow = route
        .shadow
        .as_ref()
        .map(|p| policy::evaluate(p, identity.as_deref(), &facts));
    let verdict = policy::authorize(&route.policy, identity, &facts);
    if let Some(shadow) = shadow {
        shadow::compare(shared, route, &verdict, &shadow, &facts, cx.user.as_deref());
    }
    let next = decide::decide(verdict, asked);
    cx.decision = next.label();
    let permitted = match next {
        decide::Next::Forward(p) => p,
        decide::Next::SignIn if rt.auth.jar.session_conflict(req.headers()) => {
            // A sign-in would come back to the same two cookies: say what is wrong instead.
            tracing::warn!(host = %target.host, "two session cookies: one was set by another host under the cookie domain");
            return Err(ProxyError::BadRequest(
                "this browser sent two different session cookies for this site (another site under the same domain set one); clear this site's cookies and sign in again".into(),
            ));
        }
        decide::Next::SignIn => {
            let return_to = target.path_and_query(&target.path);
            return portal::start_login(
                rt,
                route.from.https,
                target,
                return_to,
                req.headers(),
                &mut cx.cookies,
            );
        }
        decide::Next::Refuse(e) => return Err(e),
    };
    if websocket {
        websocket::check(route, route.from.https, target, req.headers())?;
    }
    let path = upstream_path(route, &target.path)?;
    let on_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let pq = target.path_and_query(&path);
    let host_header = if route.preserve_host_header {
        HeaderValue::from_str(&target.authority)
            .map_err(|_| ProxyError::BadRequest("malformed Host".into()))?
    } else {
        route.target(permitted.target).upstreams[0]
            .host_header
            .clone()
    };
    let identity = match (&permitted.identity, sid) {
        (Some(id), Some(sid)) => {
            let audience = &route.target(permitted.target).upstreams[0].host;
            identity_headers(rt, route, target, audience, id, &sid)
        }
        _ => Vec::new(),
    };
    let headers = headers::request_headers(
        std::mem::take(&mut parts.headers),
        Forwarding {
            forwarded_for: &conn.forwarded_for,
            https: route.from.https,
            authority: &target.authority,
            host_header,
            websocket,
            cookie_name: &rt.settings.cookie.name,
            owned_cookies: &route.owned_cookies,
            owned: &route.owned_headers,
            remove: &route.remove_request_headers,
            set: &route.set_request_headers,
            granted: route.granted(permitted.grant),
            identity,
        },
    );
    let body = if websocket {
        UpBody::empty()
    } else {
        UpBody::new(body)
    };
    // A WebSocket listens for its end before it goes upstream: a sign-out or a reload while
    // the upstream is still answering the upgrade is then heard, not missed.
    let ends = websocket.then(|| {
        let socket = super::sockets::OpenSocket {
            tcp: false,
            host: target.host.clone(),
            port: target.port,
            path: target.path.clone(),
            ip: conn.peer.ip(),
            identity: permitted.identity.clone(),
            upstream: route.target(permitted.target).describe(),
            forwarding: route.forwarding(permitted.grant),
            revoke: Arc::default(),
        };
        websocket::Ends::listen(shared, session, socket)
    });
    let mut resp = upstream::send(
        route.destination(permitted.target),
        &permitted,
        parts,
        &headers,
        pq,
        body,
    )
    .await?;
    headers::strip_own_set_cookies(resp.headers_mut(), &rt.settings.cookie.name);

    let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if upgraded {
        let (Some(client_upgrade), Some(ends)) = (on_upgrade, ends) else {
            // The upstream switched protocols on a request that asked for no WebSocket.
            return Err(ProxyError::UpstreamUnavailable);
        };
        match ends.gone() {
            Some(websocket::Gone::SignedOut) => return Err(ProxyError::Unauthenticated),
            Some(websocket::Gone::Refused) => return Err(ProxyError::policy_changed()),
            None => {}
        }
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let guard = shared.metrics.websocket_guard();
        let name = route.name.clone();
        // The socket keeps its connection counted under the connection caps.
        let held = conn.clone();
        tokio::spawn(async move {
            let _open = (guard, held);
            websocket::splice(client_upgrade, upstream_upgrade, name, ends).await;
        });
    }
    // `forward` gives a response without hop-by-hop headers (but a 101's upgrade).
    let (rparts, rbody) = resp.into_parts();
    let body = match route.idle_timeout {
        Some(idle) if !upgraded => IdleBody::new(rbody, idle).boxed(),
        _ => rbody.map_err(Into::into).boxed(),
    };
    Ok(Response::from_parts(rparts, body))
}

/// The request's session, refreshed first when its ID token has expired (the new cookie is
/// added to `cookies`); a session that cannot be refreshed is no session.
async fn session(
    rt: &Runtime,
    shared: &Shared,
    target: &Target,
    req: &Request<Incoming>,
    cookies: &mut SetCookies,
) -> Option<Arc<Session>> {
    let s = rt.auth.open(&*shared.store, &target.host, req.headers())?;
    if s.id_token_exp > now() || s.refresh_token.is_none() {
        return Some(s);
    }
    let oidc = rt.auth.oidc.as_ref()?;
    match Box::pin(shared.refreshes.refresh(oidc, &s)).await {
        Some(fresh) => {
            cookies.extend(
                rt.auth
                    .session_cookies(&target.host, &fresh, req.headers())
                    .into_iter()
                    .flatten(),
            );
            Some(Arc::new(fresh.session))
        }
        None => {
            cookies.extend(rt.auth.jar.clear_all(req.headers()));
            None
        }
    }
}

const ASSERTION: HeaderName = HeaderName::from_static("x-portcullis-jwt-assertion");
const CLAIM_EMAIL: HeaderName = HeaderName::from_static("x-portcullis-claim-email");
const CLAIM_GROUPS: HeaderName = HeaderName::from_static("x-portcullis-claim-groups");

/// The identity headers for the upstream: the assertion JWT, and the claims headers.
/// The assertion's `aud` is the host of the upstream the policy chose.
fn identity_headers(
    rt: &Runtime,
    route: &Route,
    target: &Target,
    audience: &str,
    id: &Identity,
    sid: &[u8; 16],
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    let https = route.from.https;
    if let Some(v) =
        rt.auth
            .signer
            .assertion(sid, route.index, (https, &target.authority), audience, id)
    {
        out.push((ASSERTION, v));
    }
    if route.pass_identity_headers {
        // Made once per identity and shared (no copy per request).
        let made = id.header_values();
        if let Some(v) = &made.email {
            out.push((CLAIM_EMAIL, v.clone()));
        }
        if let Some(v) = &made.groups {
            out.push((CLAIM_GROUPS, v.clone()));
        }
    }
    for (name, claim) in &route.jwt_claims_headers {
        if let Some(v) = claim_header(id, claim) {
            out.push((name.clone(), v));
        }
    }
    out
}

/// A claim by name as a header value for `jwt_claims_headers`: `email`, `sub`/`user`, `groups`
/// (made once per identity and shared), `iss`, `issuer_subject` (`ISSUER#SUBJECT`, immutable
/// and unique), or any claim the IdP sent. `None`: absent, or not a valid header value.
pub fn claim_header(id: &Identity, claim: &str) -> Option<HeaderValue> {
    let made = id.header_values();
    let text = match claim {
        "email" => return made.email.clone(),
        "sub" | "user" => return made.sub.clone(),
        "groups" => return made.groups.clone(),
        "iss" => id.iss.clone(),
        "issuer_subject" => format!("{}#{}", id.iss, id.sub),
        other => match id.claims.get(other)? {
            policy::ClaimValue::Str(s) => s.clone(),
            policy::ClaimValue::List(l) => l.join(","),
        },
    };
    match HeaderValue::from_str(&text) {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::warn!(claim, "claim value cannot be a header; not sent");
            None
        }
    }
}

/// The path sent upstream: the decided one, or with `prefix_rewrite` the matched prefix (or
/// `/`) replaced, refused (400) when that would not be a normalized path
/// ([`target::rewrite_prefix`]).
fn upstream_path<'p>(
    route: &Route,
    path: &'p str,
) -> Result<std::borrow::Cow<'p, str>, ProxyError> {
    let Some(rw) = &route.prefix_rewrite else {
        return Ok(path.into());
    };
    let prefix = match &route.path {
        PathMatch::Prefix(p) => p.as_str(),
        _ => "/",
    };
    target::rewrite_prefix(prefix, rw, path)
        .map(Into::into)
        .map_err(|e| ProxyError::BadRequest(e.to_string()))
}
