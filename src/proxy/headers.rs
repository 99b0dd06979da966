//! What the upstream receives: hop-by-hop headers removed, forwarding context set by the
//! proxy alone, and every identity header a client might forge stripped before Portcullis
//! adds its own.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

/// Header names as upstream frameworks fold them: lower-case, `_` and `.` read as `-`.
/// Returns `None` when the name needs no folding (the common case, no allocation).
fn folded(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b == b'_' || b == b'.') {
        std::borrow::Cow::Owned(name.replace(['_', '.'], "-"))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Forwarding context a client may claim; only the proxy sets `X-Forwarded-For/Proto/Host`.
const CLIENT_CONTEXT: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "client-ip",
    "x-rewrite-url",
    "x-envoy-external-address",
    "x-envoy-original-path",
    "front-end-https",
    "x-url-scheme",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Identity headers any upstream might trust; never taken from a client.
const IDENTITY: &[&str] = &[
    "remote-user",
    "x-remote-user",
    "x-user",
    "x-email",
    "x-openclaw-scopes",
    "authorization-user",
];

const IDENTITY_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "x-original-",
    "x-portcullis-",
    "x-pomerium-",
    "x-auth-request-",
    "x-remote-",
];

/// True for a client header that must never reach an upstream (besides hop-by-hop ones).
pub fn is_spoofable(name: &str, extra: &[HeaderName]) -> bool {
    let f = folded(name);
    let f = f.as_ref();
    CLIENT_CONTEXT.contains(&f)
        || IDENTITY.contains(&f)
        || IDENTITY_PREFIXES.iter().any(|p| f.starts_with(p))
        || extra.iter().any(|h| folded(h.as_str()) == f)
}

/// Names listed in `Connection`, which are hop-by-hop for this message.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Context for the forwarded request.
pub struct Forwarding<'a> {
    pub peer_ip: IpAddr,
    pub https: bool,
    /// The Host the client sent.
    pub authority: &'a str,
    pub host_header: HeaderValue,
    pub websocket: bool,
    /// Session cookie name: its cookies (and chunks) are not passed on.
    pub cookie_name: &'a str,
    /// Names the proxy sets for this route (claims headers...), stripped from the client's.
    pub owned: &'a [HeaderName],
    pub remove: &'a [HeaderName],
    pub set: &'a [(HeaderName, HeaderValue)],
    /// Identity headers for a signed-in user (assertion, claims), added last.
    pub identity: &'a [(HeaderName, HeaderValue)],
}

/// Builds the upstream request headers from the client's.
pub fn request_headers(src: &HeaderMap, fw: &Forwarding<'_>) -> HeaderMap {
    let listed = connection_listed(src);
    let mut out = HeaderMap::with_capacity(src.len() + 6);
    for (name, value) in src {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || n == "host"
            || n == "content-length"
            || listed.iter().any(|l| l == n)
            || is_spoofable(n, fw.owned)
            || fw.remove.contains(name)
        {
            continue;
        }
        if name == header::COOKIE {
            if let Some(v) = strip_cookie(value, fw.cookie_name) {
                out.append(header::COOKIE, v);
            }
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&fw.peer_ip.to_string()) {
        out.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    out.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if fw.https { "https" } else { "http" }),
    );
    if let Ok(v) = HeaderValue::from_str(fw.authority) {
        out.insert(HeaderName::from_static("x-forwarded-host"), v);
    }
    out.insert(header::HOST, fw.host_header.clone());
    for (k, v) in fw.set {
        out.insert(k.clone(), v.clone());
    }
    for (k, v) in fw.identity {
        out.insert(k.clone(), v.clone());
    }
    if fw.websocket {
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    out
}

/// Removes the session cookie (and its chunks `NAME_1`, ... and the login cookie `NAME_csrf`)
/// from a Cookie header; `None` if nothing is left.
fn strip_cookie(value: &HeaderValue, name: &str) -> Option<HeaderValue> {
    let Ok(s) = value.to_str() else {
        return Some(value.clone());
    };
    let ours = |cookie: &str| {
        let n = cookie.split('=').next().unwrap_or("").trim();
        n == name
            || n.strip_prefix(name)
                .and_then(|r| r.strip_prefix('_'))
                .is_some_and(|r| !r.is_empty())
    };
    if !s.split(';').any(ours) {
        return Some(value.clone());
    }
    let kept: Vec<&str> = s
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !ours(c))
        .collect();
    if kept.is_empty() {
        None
    } else {
        HeaderValue::from_str(&kept.join("; ")).ok()
    }
}

/// Response headers from the upstream, without hop-by-hop ones (kept for a 101).
pub fn response_headers(src: &mut HeaderMap, upgrade: bool) {
    let listed = connection_listed(src);
    let remove: Vec<HeaderName> = src
        .keys()
        .filter(|n| {
            let s = n.as_str();
            let hop = HOP_BY_HOP.contains(&s) || listed.iter().any(|l| l == s);
            hop && !(upgrade && (s == "upgrade" || s == "connection"))
        })
        .cloned()
        .collect();
    for n in remove {
        src.remove(&n);
    }
}

/// Is this a WebSocket upgrade request (HTTP/1.1 `Upgrade: websocket`)?
pub fn is_websocket_upgrade(method: &http::Method, headers: &HeaderMap) -> bool {
    let has_token = |name: HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    method == http::Method::GET
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fw<'a>(owned: &'a [HeaderName]) -> Forwarding<'a> {
        Forwarding {
            peer_ip: "203.0.113.9".parse().unwrap(),
            https: true,
            authority: "app.example.com",
            host_header: HeaderValue::from_static("upstream:8080"),
            websocket: false,
            cookie_name: "_portcullis",
            owned,
            remove: &[],
            set: &[],
            identity: &[],
        }
    }

    #[test]
    fn spoofed_identity_and_context_never_pass() {
        let mut h = HeaderMap::new();
        for n in [
            "x-forwarded-user",
            "x_forwarded_user",
            "x.forwarded.user",
            "X-Portcullis-Jwt-Assertion",
            "x_portcullis_claim_email",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "forwarded",
            "x-real-ip",
            "x-original-url",
            "x-rewrite-url",
            "x-forwarded-uri",
            "remote-user",
            "x-team",
            "x_team",
        ] {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        h.insert("accept", HeaderValue::from_static("text/html"));
        let owned = [HeaderName::from_static("x-team")];
        let out = request_headers(&h, &fw(&owned));
        for (n, v) in &out {
            assert_ne!(v, "evil", "{n} passed through");
        }
        assert_eq!(out["x-forwarded-for"], "203.0.113.9");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "app.example.com");
        assert_eq!(out["host"], "upstream:8080");
        assert_eq!(out["accept"], "text/html");
    }

    #[test]
    fn hop_by_hop_and_connection_listed_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let out = request_headers(&h, &fw(&[]));
        for n in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
            "transfer-encoding",
        ] {
            assert!(!out.contains_key(n), "{n} kept");
        }
        assert!(out.contains_key("x-kept"));
    }

    #[test]
    fn session_cookies_stay_here() {
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_static(
                "a=1; _portcullis=s; _portcullis_1=t; _portcullis_csrf=u; _portcullisx=keep",
            ),
        );
        let out = request_headers(&h, &fw(&[]));
        assert_eq!(out["cookie"], "a=1; _portcullisx=keep");
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_static("_portcullis=s"));
        assert!(!request_headers(&h, &fw(&[])).contains_key("cookie"));
    }

    #[test]
    fn websocket_detection() {
        let mut h = HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("WebSocket"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_websocket_upgrade(&http::Method::GET, &h));
        assert!(!is_websocket_upgrade(&http::Method::POST, &h));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        assert!(!is_websocket_upgrade(&http::Method::GET, &h));
    }
}
