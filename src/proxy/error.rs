//! The one place where errors become pages: status code, HTML or JSON, security headers.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Body;

/// The sign-out form's markup, for [`SIGN_OUT_FORM`] and the pages that build on it.
macro_rules! sign_out_form {
    () => {
        r#"<form method="post" action="/.portcullis/sign_out"><button type="submit">Sign out</button></form>"#
    };
}

/// Everything that ends a request before (or instead of) the upstream's answer.
#[derive(Debug)]
pub enum ProxyError {
    BadRequest(String),
    NotFound,
    /// TLS SNI named one host, the request another.
    Misdirected,
    MethodNotAllowed,
    /// No session (non-navigation requests; navigations are redirected to sign in).
    Unauthenticated,
    /// A CONNECT to a TCP route without a session: `portcullis tcp` signs in and asks again.
    TunnelSignIn,
    /// Signed in (or not) and refused by the route's policy.
    Forbidden {
        who: Option<String>,
        reason: String,
    },
    /// Let in by the policy, but no `to` entry's `when` picks this user.
    NoUpstream {
        who: Option<String>,
    },
    WebSocketNotAllowed,
    OriginNotAllowed,
    /// The identity provider cannot be reached yet.
    IdpUnavailable,
    UpstreamUnavailable,
    UpstreamTimeout,
}

impl From<crate::upstream::Error> for ProxyError {
    fn from(e: crate::upstream::Error) -> ProxyError {
        match e {
            crate::upstream::Error::BadPath => {
                ProxyError::BadRequest("the path cannot be forwarded".into())
            }
            crate::upstream::Error::Unavailable => ProxyError::UpstreamUnavailable,
            crate::upstream::Error::Timeout => ProxyError::UpstreamTimeout,
        }
    }
}

/// Why a socket or tunnel is refused, or closed, when a reload no longer lets its user in.
pub const POLICY_CHANGED: &str = "access revoked by a policy change";

impl ProxyError {
    /// A socket or tunnel refused by a reload between its decision and its opening.
    pub fn policy_changed() -> ProxyError {
        ProxyError::Forbidden {
            who: None,
            reason: POLICY_CHANGED.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ProxyError::TunnelSignIn => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            ProxyError::Forbidden { .. }
            | ProxyError::NoUpstream { .. }
            | ProxyError::WebSocketNotAllowed
            | ProxyError::OriginNotAllowed => StatusCode::FORBIDDEN,
            ProxyError::IdpUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A short machine-readable code (JSON `error`, logs).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::NotFound => "no_route",
            ProxyError::Misdirected => "misdirected_request",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::Unauthenticated => "unauthenticated",
            ProxyError::TunnelSignIn => "sign_in_required",
            ProxyError::Forbidden { .. } => "forbidden",
            ProxyError::NoUpstream { .. } => "no_upstream",
            ProxyError::WebSocketNotAllowed => "websocket_not_allowed",
            ProxyError::OriginNotAllowed => "origin_not_allowed",
            ProxyError::IdpUnavailable => "idp_unavailable",
            ProxyError::UpstreamUnavailable => "upstream_unavailable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
        }
    }

    fn message(&self) -> String {
        match self {
            ProxyError::BadRequest(why) => format!("Bad request: {why}."),
            ProxyError::NotFound => "No route matches this address.".into(),
            ProxyError::Misdirected => {
                "This connection was opened for another host; open a new connection.".into()
            }
            ProxyError::MethodNotAllowed => "This method is not served.".into(),
            ProxyError::Unauthenticated => "Sign in first.".into(),
            ProxyError::TunnelSignIn => {
                "Sign in first: `portcullis tcp HOST:PORT` opens the sign-in page.".into()
            }
            ProxyError::Forbidden { who: Some(w), .. } => {
                format!("You are signed in as {w}, and this account may not open this page.")
            }
            ProxyError::Forbidden { who: None, .. } => "Access to this page is not allowed.".into(),
            ProxyError::NoUpstream { who: Some(w) } => format!(
                "You are signed in as {w}, and no gateway is assigned to this account here. Ask an administrator to assign you one."
            ),
            ProxyError::NoUpstream { who: None } => {
                "No gateway is assigned to you here. Ask an administrator to assign you one.".into()
            }
            ProxyError::WebSocketNotAllowed => {
                "WebSocket connections are not allowed on this route.".into()
            }
            ProxyError::OriginNotAllowed => {
                "This WebSocket was opened from another site, so it is refused.".into()
            }
            ProxyError::IdpUnavailable => {
                "The sign-in service cannot be reached right now. Try again in a moment.".into()
            }
            ProxyError::UpstreamUnavailable => {
                "The application behind this address is not answering. Try again in a moment."
                    .into()
            }
            ProxyError::UpstreamTimeout => "The application took too long to answer.".into(),
        }
    }

    /// The page for this error, JSON when the client asks for it.
    pub fn into_response(self, wants_json: bool) -> Response<Body> {
        let status = self.status();
        let msg = self.message();
        let sign_out = matches!(
            self,
            ProxyError::Forbidden { who: Some(_), .. } | ProxyError::NoUpstream { who: Some(_) }
        );
        let mut r = if wants_json {
            let body = serde_json::json!({ "error": self.code(), "message": msg, "status": status.as_u16() });
            page(status, "application/json", body.to_string())
        } else {
            let extra = if sign_out {
                concat!(
                    "<p>To use another account, sign out first.</p>",
                    sign_out_form!()
                )
            } else {
                ""
            };
            let html = format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>{code} {reason}</title>\
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#222}}</style></head>\
<body><h1>{code} {reason}</h1><p>{msg}</p>{extra}<hr><small>Portcullis</small></body></html>",
                code = status.as_u16(),
                reason = status.canonical_reason().unwrap_or(""),
                msg = html_escape(&msg),
            );
            page(status, "text/html; charset=utf-8", html)
        };
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            // RFC 9110 §11.7.1: a 407 names how to authenticate.
            r.headers_mut().insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Portcullis realm=\"portcullis\""),
            );
        }
        r
    }
}

/// The sign-out button on Portcullis's pages: a form that POSTs, because a GET sign-out from
/// another site's link is not acted on (`auth::endpoints`).
pub const SIGN_OUT_FORM: &str = sign_out_form!();

/// Escapes text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page Portcullis itself serves, with the headers every such page carries.
pub fn page(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    security_headers(h);
    r
}

/// CSP, no framing, no caching, no sniffing, no referrer.
pub fn security_headers(h: &mut http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error → status table is part of the contract.
    #[test]
    fn status_table_is_pinned() {
        let table = [
            (ProxyError::BadRequest("x".into()), 400),
            (ProxyError::NotFound, 404),
            (ProxyError::Misdirected, 421),
            (ProxyError::MethodNotAllowed, 405),
            (ProxyError::Unauthenticated, 401),
            (
                ProxyError::Forbidden {
                    who: None,
                    reason: String::new(),
                },
                403,
            ),
            (ProxyError::WebSocketNotAllowed, 403),
            (ProxyError::OriginNotAllowed, 403),
            (ProxyError::IdpUnavailable, 503),
            (ProxyError::UpstreamUnavailable, 502),
            (ProxyError::UpstreamTimeout, 504),
        ];
        for (e, code) in table {
            assert_eq!(e.status().as_u16(), code, "{e:?}");
        }
    }

    #[test]
    fn pages_escape_and_carry_security_headers() {
        let r = ProxyError::Forbidden {
            who: Some("<script>@x".into()),
            reason: String::new(),
        }
        .into_response(false);
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert_eq!(r.headers()["cache-control"], "no-store");
        assert!(r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        assert!(!r.headers().contains_key("access-control-allow-origin"));
        let body = futures::executor::block_on(r.into_body().collect())
            .unwrap()
            .to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("signed in as &lt;script&gt;@x"), "{body}");
        assert!(!body.contains("<script>"), "{body}");
        assert_eq!(
            html_escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
