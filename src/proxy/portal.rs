//! The paths Portcullis answers itself on every route host: `/.portcullis/sign_in`,
//! `callback`, `sign_out`, `signed_out`, the who-am-I page, and the assertion JWKS.

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::error::{html_escape, page, ProxyError, SIGN_OUT_FORM};
use super::state::Shared;
use super::Body;
use crate::auth::session::{valid_challenge, valid_state, LoginState, MAX_LOGINS};
use crate::auth::SetCookies;
use crate::clock::now;
use crate::http::target::{normalize_path, Target};
use crate::paths::{CALLBACK, CLI, JWKS, SIGNED_OUT, SIGN_IN, SIGN_OUT, WHOAMI};
use crate::runtime::Runtime;

/// Longest `code`/`state` accepted at the callback (before any work is done).
const MAX_PARAM: usize = 4096;

/// The externally visible origin of a request (`https://host[:port]` as the client sent it).
pub fn origin(https: bool, target: &Target) -> String {
    format!(
        "{}://{}",
        if https { "https" } else { "http" },
        target.authority.to_ascii_lowercase()
    )
}

/// A return target that can only be a path on this host: anything else becomes `/`.
pub fn safe_return(raw: &str) -> String {
    let ok_char = |c: char| c.is_ascii_graphic() && c != '\\' && c != '#';
    if !raw.starts_with('/') || raw.starts_with("//") || !raw.chars().all(ok_char) {
        return "/".into();
    }
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    match normalize_path(path) {
        Ok(p) if !p.starts_with("//") => match query {
            Some(q) => format!("{p}?{q}"),
            None => p,
        },
        _ => "/".into(),
    }
}

/// The longest return path kept across a sign-in; a longer one comes back to its path
/// without the query, or to `/`.
pub const MAX_RETURN_TO: usize = 2048;

fn bounded_return(to: String) -> String {
    if to.len() <= MAX_RETURN_TO {
        return to;
    }
    match to.split_once('?') {
        Some((path, _)) if path.len() <= MAX_RETURN_TO => path.to_string(),
        _ => "/".into(),
    }
}

fn redirect(location: &str) -> Result<Response<Body>, ProxyError> {
    let mut r = page(StatusCode::FOUND, "text/html; charset=utf-8", String::new());
    let v = HeaderValue::from_str(location)
        .map_err(|_| ProxyError::BadRequest("unusable redirect".into()))?;
    r.headers_mut().insert(header::LOCATION, v);
    Ok(r)
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Sends a browser to the IdP, remembering where it was going.
pub fn start_login(
    rt: &Runtime,
    https: bool,
    target: &Target,
    return_to: String,
    headers: &HeaderMap,
    cookies: &mut SetCookies,
) -> Result<Response<Body>, ProxyError> {
    let oidc = rt.auth.oidc.as_ref().ok_or(ProxyError::Unauthenticated)?;
    // Login cookies ride on every request to the host (`__Host-`, `Path=/`): a page that
    // starts many sign-ins with long return paths must not grow them past the header limit.
    // The return path is bounded, and a browser already holding MAX_LOGINS sign-ins in
    // progress loses them (the newest one is then the only one).
    let return_to = bounded_return(return_to);
    let jar = &rt.auth.jar;
    let logins = jar.login_cookies(headers);
    if logins.len() >= MAX_LOGINS {
        cookies.extend(logins.iter().filter_map(|n| jar.expire_login(n)));
    }
    let provider = oidc.provider().ok_or(ProxyError::IdpUnavailable)?;
    let redirect_uri = format!("{}{CALLBACK}", origin(https, target));
    let (url, login) = oidc
        .authorize(&provider, &redirect_uri, return_to)
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot start sign-in");
            ProxyError::IdpUnavailable
        })?;
    if !valid_state(&login.state) {
        tracing::warn!("cannot start sign-in: the state made is not a valid cookie name part");
        return Err(ProxyError::IdpUnavailable);
    }
    let key = rt.auth.key.as_ref().ok_or(ProxyError::IdpUnavailable)?;
    let sealed = key
        .seal("login", &target.host, &login)
        .ok_or(ProxyError::IdpUnavailable)?;
    cookies.extend(rt.auth.jar.set_login(&login.state, &sealed));
    redirect(url.as_str())
}

/// Answers a request for one of Portcullis's own paths.
pub async fn serve(
    rt: &Runtime,
    shared: &Shared,
    https: bool,
    target: &Target,
    req: &Request<Incoming>,
    cookies: &mut SetCookies,
) -> Result<Response<Body>, ProxyError> {
    if !rt.routes.has_host(&target.host) {
        return Err(ProxyError::NotFound);
    }
    let https = rt.routes.host_is_https(&target.host).unwrap_or(https);
    let post = req.method() == Method::POST && (target.path == SIGN_OUT || target.path == CLI);
    if req.method() != Method::GET && req.method() != Method::HEAD && !post {
        return Err(ProxyError::MethodNotAllowed);
    }
    let q = target.query.as_deref();
    match target.path.as_str() {
        JWKS => {
            let mut r = page(
                StatusCode::OK,
                "application/json",
                rt.auth.signer.jwks().to_string(),
            );
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            Ok(r)
        }
        SIGN_IN => {
            let to =
                query_param(q, "redirect_uri").map_or_else(|| "/".to_string(), |r| safe_return(&r));
            start_login(rt, https, target, to, req.headers(), cookies)
        }
        CALLBACK => {
            let r = callback(rt, https, target, req, cookies).await;
            shared.metrics.sign_in(r.is_ok());
            r
        }

        SIGN_OUT if from_this_origin(https, target, req) => {
            sign_out(rt, shared, https, target, req, cookies)
        }
        SIGN_OUT => Ok(info_page(
            "Sign out?",
            "A page on another site asked to sign you out.",
            SIGN_OUT_FORM,
        )),
        CLI => cli(rt, shared, https, target, req, cookies),
        SIGNED_OUT => Ok(info_page(
            "Signed out",
            "You are signed out.",
            r#"<p><a href="/.portcullis/sign_in">Sign in again</a></p>"#,
        )),
        WHOAMI | "/.portcullis" => Ok(whoami(rt, shared, target, req)),
        _ => Err(ProxyError::NotFound),
    }
}

/// Did the user ask for this themselves? Sign-out acts only on a request the browser says is
/// not from another site: `Sec-Fetch-Site` `none` (typed or bookmarked) or `same-origin` (the
/// button on a Portcullis page). A client that sends no `Sec-Fetch-Site` (not a current
/// browser) is taken at its word for a GET, and for a POST when its `Origin` is absent or this
/// origin. SameSite=Lax cookies ride on another site's top-level links, so without this any
/// page could sign users out. (`Origin` is not required with `Sec-Fetch-Site`: under this
/// page's `Referrer-Policy: no-referrer` a browser sends `Origin: null` even for its own form.)
fn from_this_origin(https: bool, target: &Target, req: &Request<Incoming>) -> bool {
    let h = req.headers();
    match h.get("sec-fetch-site") {
        Some(v) => v == "none" || v == "same-origin",
        None => {
            req.method() != Method::POST
                || h.get(header::ORIGIN).is_none_or(|o| {
                    o.to_str()
                        .is_ok_and(|o| o.eq_ignore_ascii_case(&origin(https, target)))
                })
        }
    }
}

/// `portcullis tcp`'s sign-in (RFC 8252's loopback redirect, RFC 7636's PKCE): signs the
/// browser in if it is not, asks the user to confirm (a POST from this origin, so another site
/// cannot hand a session to whatever listens on a loopback port), then redirects (303) to
/// `http://127.0.0.1:PORT/?state=S&code=C`. The code (valid two minutes) is worth nothing
/// without the verifier the CLI keeps; and being a redirect answering the user's own form
/// submission, not a page, it is out of reach of any script on this origin (an application's,
/// behind another route on the host).
fn cli(
    rt: &Runtime,
    shared: &Shared,
    https: bool,
    target: &Target,
    req: &Request<Incoming>,
    cookies: &mut SetCookies,
) -> Result<Response<Body>, ProxyError> {
    let q = target.query.as_deref();
    let port = query_param(q, "port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|&p| p >= 1024);
    let state = query_param(q, "state").filter(|s| valid_state(s));
    let challenge = query_param(q, "challenge").filter(|c| valid_challenge(c));
    let (Some(port), Some(state), Some(challenge)) = (port, state, challenge) else {
        return Err(ProxyError::BadRequest(
            "this page is opened by `portcullis tcp`, with its port, state and challenge".into(),
        ));
    };
    let here = format!("{CLI}?port={port}&state={state}&challenge={challenge}");
    let Some(s) = rt.auth.open(&*shared.store, &target.host, req.headers()) else {
        if req.method() == Method::POST {
            return Err(ProxyError::Unauthenticated);
        }
        return start_login(rt, https, target, here, req.headers(), cookies);
    };
    let who = s.identity.email.as_deref().unwrap_or(&s.identity.sub);
    let loopback = format!("http://127.0.0.1:{port}");
    if req.method() != Method::POST || !from_this_origin(https, target, req) || !clicked(req) {
        let mut page = info_page(
            "Sign in portcullis tcp?",
            &format!(
                "The command `portcullis tcp` on this computer (waiting on port {port}) asks for access to the TCP routes of {} as {who}, until you sign out. Continue only if you just started it.",
                target.host
            ),
            &format!(
                r#"<form method="post" action="{}"><button type="submit">Sign in portcullis tcp</button></form>"#,
                html_escape(&here)
            ),
        );
        // The form's answer redirects to the loopback listener, which `form-action` must allow.
        let csp = format!(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' {loopback}; frame-ancestors 'none'; base-uri 'none'"
        );
        if let Ok(v) = HeaderValue::from_str(&csp) {
            page.headers_mut()
                .insert(header::CONTENT_SECURITY_POLICY, v);
        }
        return Ok(page);
    }
    let code = rt
        .auth
        .seal_cli_code(&target.host, &s, &challenge)
        .ok_or_else(|| login_failed("cannot seal the session"))?;
    tracing::info!(user = who, port, "signed in portcullis tcp");
    let mut to = url::Url::parse(&format!("{loopback}/"))
        .map_err(|_| ProxyError::BadRequest("unusable port".into()))?;
    to.query_pairs_mut()
        .append_pair("state", &state)
        .append_pair("code", &code);
    let mut r = redirect(to.as_str())?;
    *r.status_mut() = StatusCode::SEE_OTHER;
    Ok(r)
}

/// Is this the confirmation form, submitted by the user? A browser that sends fetch metadata
/// says so for a form's submission (a navigation of the page, by a user's action); a script's
/// `fetch` on this origin is `cors` or `same-origin` mode, and gets the confirmation page again.
fn clicked(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    let Some(mode) = h.get("sec-fetch-mode") else {
        return true;
    };
    mode == "navigate"
        && h.get("sec-fetch-dest").is_none_or(|d| d == "document")
        && h.get("sec-fetch-user").is_some_and(|u| u == "?1")
}

fn info_page(title: &str, text: &str, extra: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#222}}</style></head>\
<body><h1>{t}</h1><p>{x}</p>{extra}<hr><small>Portcullis</small></body></html>",
        t = html_escape(title),
        x = html_escape(text)
    );
    page(StatusCode::OK, "text/html; charset=utf-8", html)
}

fn login_failed(why: &str) -> ProxyError {
    tracing::info!(reason = why, "sign-in refused");
    ProxyError::BadRequest(
        "sign-in could not be completed; start again from the page you wanted".into(),
    )
}

async fn callback(
    rt: &Runtime,
    https: bool,
    target: &Target,
    req: &Request<Incoming>,
    cookies: &mut SetCookies,
) -> Result<Response<Body>, ProxyError> {
    let q = target.query.as_deref();
    if q.is_some_and(|q| q.len() > 4 * MAX_PARAM) {
        return Err(login_failed("oversized callback"));
    }
    // Each sign-in in progress has a login cookie named after its state, so sign-ins started
    // in several tabs each complete. Whatever happens next, this one is used up; and a browser
    // holding more than MAX_LOGINS of them loses them all, so they stay bounded.
    let state = query_param(q, "state").filter(|s| valid_state(s));
    let jar = &rt.auth.jar;
    let logins = jar.login_cookies(req.headers());
    if logins.len() > MAX_LOGINS {
        cookies.extend(logins.iter().filter_map(|n| jar.expire_login(n)));
    } else if let Some(state) = &state {
        cookies.extend(jar.expire_login(&jar.login_name(state)));
    }
    let oidc = rt.auth.oidc.as_ref().ok_or(ProxyError::NotFound)?;
    let key = rt.auth.key.as_ref().ok_or(ProxyError::NotFound)?;
    if let Some(err) = query_param(q, "error") {
        tracing::info!(error = %err, "the identity provider refused the sign-in");
        return Err(ProxyError::Forbidden {
            who: None,
            reason: "the identity provider refused the sign-in".into(),
        });
    }
    let code = query_param(q, "code")
        .filter(|c| !c.is_empty() && c.len() <= MAX_PARAM)
        .ok_or_else(|| login_failed("no code"))?;
    let state = state.ok_or_else(|| login_failed("no state, or not one Portcullis makes"))?;
    let sealed = crate::http::cookie::cookie(req.headers(), &jar.login_name(&state))
        .ok_or_else(|| login_failed("no login cookie (replayed or cross-site callback)"))?;
    let login: LoginState = key
        .open("login", &target.host, sealed)
        .ok_or_else(|| login_failed("login cookie does not open"))?;
    if login.expires <= now() {
        return Err(login_failed("login expired"));
    }
    if !constant_time_eq(login.state.as_bytes(), state.as_bytes()) {
        return Err(login_failed("state mismatch"));
    }
    let redirect_uri = format!("{}{CALLBACK}", origin(https, target));
    let new = oidc
        .callback(&redirect_uri, &code, &login)
        .await
        .map_err(|e| match e {
            crate::auth::oidc::OidcError::Unavailable => ProxyError::IdpUnavailable,
            crate::auth::oidc::OidcError::Rejected(why) => login_failed(&why),
        })?;
    let id = &new.session.identity;
    tracing::info!(user = id.email.as_deref().unwrap_or(&id.sub), "signed in");
    cookies.extend(
        rt.auth
            .session_cookies(&target.host, &new, req.headers())
            .ok_or_else(|| login_failed("cannot seal the session"))?,
    );
    redirect(&format!(
        "{}{}",
        origin(https, target),
        safe_return(&login.return_to)
    ))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn sign_out(
    rt: &Runtime,
    shared: &Shared,
    https: bool,
    target: &Target,
    req: &Request<Incoming>,
    cookies: &mut SetCookies,
) -> Result<Response<Body>, ProxyError> {
    let session = rt.auth.open(&*shared.store, &target.host, req.headers());
    cookies.extend(rt.auth.jar.clear_all(req.headers()));
    let post_logout = format!("{}{SIGNED_OUT}", origin(https, target));
    let Some(s) = session else {
        return if req.method() == Method::POST {
            Ok(moving_on(&post_logout))
        } else {
            redirect(&post_logout)
        };
    };
    // Recorded first, then broadcast: a WebSocket upgrade in flight subscribes before it
    // goes upstream and looks in the store after, so it sees one or the other.
    if let Err(e) = shared.store.revoke(&s.id, s.expires) {
        // The cookie is cleared anyway; a copy of it would still work: say so loudly.
        tracing::error!(error = %e, "could not record the sign-out; a copied cookie stays valid until it expires");
    }
    // Open WebSockets of this session close now (none listening is fine).
    let _ = shared.signed_out.send(s.id);
    tracing::info!(
        user = s.identity.email.as_deref().unwrap_or(&s.identity.sub),
        "signed out"
    );
    let next = rt
        .auth
        .oidc
        .as_ref()
        .and_then(|o| {
            let hint = rt.auth.sign_out_hint(&target.host, &s, req.headers());
            o.end_session_url(hint.as_deref(), &post_logout)
        })
        .map_or(post_logout, |u| u.to_string());
    if req.method() == Method::POST {
        // The sign-out button's form: a redirect answering it would be a form submission
        // to the IdP, which the page's CSP (`form-action 'self'`) stops; a page that moves on
        // by itself is a plain navigation.
        return Ok(moving_on(&next));
    }
    redirect(&next)
}

/// A page that sends the browser on to `location` (a meta refresh, and a link).
fn moving_on(location: &str) -> Response<Body> {
    let to = html_escape(location);
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"0; url={to}\">\
<title>Signing out</title></head><body><p>Signed out here. <a href=\"{to}\">Continue</a></p></body></html>"
    );
    page(StatusCode::OK, "text/html; charset=utf-8", html)
}

fn whoami(
    rt: &Runtime,
    shared: &Shared,
    target: &Target,
    req: &Request<Incoming>,
) -> Response<Body> {
    let json = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let s = rt.auth.open(&*shared.store, &target.host, req.headers());
    if json {
        let body = match &s {
            Some(s) => serde_json::json!({
                "signed_in": true,
                "email": s.identity.email,
                "email_verified": s.identity.usable_email().is_some(),
                "user": s.identity.sub,
                // The `issuer_subject` claim header's value (OpenClaw's allowUsers takes it).
                "issuer_subject": format!("{}#{}", s.identity.iss, s.identity.sub),
                "groups": s.identity.groups,
                "claims": s.identity.claims.iter().map(|(k, v)| {
                    let v = match v {
                        crate::policy::ClaimValue::Str(s) => serde_json::json!(s),
                        crate::policy::ClaimValue::List(l) => serde_json::json!(l),
                    };
                    (k.clone(), v)
                }).collect::<serde_json::Map<_, _>>(),
                "expires": s.expires,
            }),
            None => serde_json::json!({ "signed_in": false }),
        };
        return page(StatusCode::OK, "application/json", body.to_string());
    }
    match s {
        Some(s) => {
            let id = &s.identity;
            let who = match (&id.email, id.usable_email()) {
                (Some(e), None) => format!("{e} (unverified email: not passed on as identity)"),
                (Some(e), Some(_)) => e.clone(),
                (None, _) => id.sub.clone(),
            };
            let groups = if id.groups.is_empty() {
                "none".to_string()
            } else {
                id.groups.join(", ")
            };
            let claims: String = id
                .claims
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        crate::policy::ClaimValue::Str(s) => s.clone(),
                        crate::policy::ClaimValue::List(l) => l.join(", "),
                    };
                    format!("<li>{}: {}</li>", html_escape(k), html_escape(&v))
                })
                .collect();
            let left = s.expires.saturating_sub(now());
            info_page(
                "Signed in",
                &format!("You are signed in as {who}."),
                &format!(
                    "<p>Issuer and subject (the <code>issuer_subject</code> header value): <code>{}</code></p><p>Groups: {}</p><p>Other claims:</p><ul>{claims}</ul><p>Session ends in {} min.</p>{}",
                    html_escape(&format!("{}#{}", id.iss, id.sub)),
                    html_escape(&groups),
                    left / 60,
                    SIGN_OUT_FORM
                ),
            )
        }
        None => info_page(
            "Not signed in",
            "You are not signed in.",
            r#"<p><a href="/.portcullis/sign_in">Sign in</a></p>"#,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::safe_return;

    #[test]
    fn return_targets_stay_on_this_host() {
        for (input, want) in [
            ("/app/x?y=1", "/app/x?y=1"),
            ("/", "/"),
            ("//evil.test", "/"),
            ("/\\evil.test", "/"),
            ("https:evil.test", "/"),
            ("https://evil.test/", "/"),
            ("javascript:alert(1)", "/"),
            ("/%2F%2Fevil.test", "/"),
            ("/a\r\nSet-Cookie: x=1", "/"),
            ("/a/../../evil", "/evil"),
            ("/./", "/"),
            ("", "/"),
            ("evil.test", "/"),
        ] {
            assert_eq!(safe_return(input), want, "{input:?}");
        }
    }
}
