//! Hop-by-hop and framing header names (RFC 9110 §7.6.1, RFC 9112 §6), and header names as
//! upstream frameworks fold them (`_` and `.` read as `-`).

use http::header::{self, HeaderMap, HeaderName};

/// Header names as upstream frameworks fold them: lower-case, `_` and `.` read as `-`.
/// Returns `None` when the name needs no folding (the common case, no allocation).
pub fn folded(name: &str) -> std::borrow::Cow<'_, str> {
    if name.bytes().any(|b| b == b'_' || b == b'.') {
        std::borrow::Cow::Owned(name.replace(['_', '.'], "-"))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, and older ones still seen): never forwarded.
static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// What is hop-by-hop in one message: which of [`HOP_BY_HOP`] it has (a bit each), and the
/// other names its `Connection` header lists (rare: allocated only then).
pub struct HopByHop {
    present: u16,
    listed: Vec<HeaderName>,
}

impl HopByHop {
    pub fn of(h: &HeaderMap) -> HopByHop {
        let mut present = 0u16;
        for n in h.keys() {
            if let Some(i) = hop_by_hop_index(n) {
                present |= 1 << i;
            }
        }
        let mut listed = Vec::new();
        if present & 1 != 0 {
            let tokens = h
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|t| !t.is_empty());
            for t in tokens {
                if HOP_BY_HOP
                    .iter()
                    .any(|x| x.as_str().eq_ignore_ascii_case(t))
                {
                    continue;
                }
                // `from_bytes` lower-cases; a token that is no header name names nothing.
                if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                    if !listed.contains(&n) {
                        listed.push(n);
                    }
                }
            }
        }
        HopByHop { present, listed }
    }

    /// Is `n` hop-by-hop in this message (one of [`HOP_BY_HOP`], or listed in `Connection`)?
    pub fn contains(&self, n: &HeaderName) -> bool {
        hop_by_hop_index(n).is_some() || self.listed.contains(n)
    }

    /// Does the message have this one of [`HOP_BY_HOP`]? (A header it has not is not looked up.)
    pub fn has(&self, n: &HeaderName) -> bool {
        hop_by_hop_index(n).is_some_and(|i| self.present & (1 << i) != 0)
    }

    /// Removes them from a response's headers (`Upgrade` and `Connection` kept for a 101).
    pub fn strip_response(&self, src: &mut HeaderMap, upgrade: bool) {
        let kept = |n: &HeaderName| upgrade && (n == header::UPGRADE || n == header::CONNECTION);
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            if self.present & (1 << i) != 0 && !kept(n) {
                src.remove(n);
            }
        }
        for n in &self.listed {
            src.remove(n);
        }
    }
}

/// Is this a hop-by-hop header (one of [`HOP_BY_HOP`])?
pub fn is_hop_by_hop(n: &HeaderName) -> bool {
    hop_by_hop_index(n).is_some()
}

/// The place of a name in [`HOP_BY_HOP`]: one string match (the compiler dispatches on the
/// length), not ten `HeaderName` compares (which measured ten times the instructions).
fn hop_by_hop_index(n: &HeaderName) -> Option<usize> {
    hop_by_hop_str_index(n.as_str())
}

/// [`hop_by_hop_index`] of a lower-case name.
fn hop_by_hop_str_index(n: &str) -> Option<usize> {
    Some(match n {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        "http2-settings" => 9,
        _ => return None,
    })
}

/// A header name as upstream frameworks read it (see [`folded`]), made once when a route is
/// compiled for the names it owns. (Folding a valid name gives a valid name; were it not,
/// the name would be kept as it is.)
pub fn folded_name(name: &HeaderName) -> HeaderName {
    HeaderName::from_bytes(folded(name.as_str()).as_bytes()).unwrap_or_else(|_| name.clone())
}

/// A name Portcullis writes for each connection, as a framework may fold a client's spelling
/// onto it (`Transfer_Encoding`, `Content.Length`, `Keep_Alive`, `Proxy_Connection`, `Host`):
/// beside the proxy's own framing, such a copy lets a server that folds `_` into `-` (CGI,
/// WSGI, PHP-FPM, older Puma) frame the body by the client's word. `f` is folded.
pub fn is_framing_or_hop_by_hop(f: &str) -> bool {
    matches!(f, "content-length" | "host") || hop_by_hop_str_index(f).is_some()
}

/// Response headers from the upstream, without hop-by-hop ones (kept for a 101).
pub fn response_headers(src: &mut HeaderMap, upgrade: bool) {
    HopByHop::of(src).strip_response(src, upgrade);
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
    use http::HeaderValue;

    /// Headers, appended in order.
    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_index_matches_the_list() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(n), Some(i), "{n}");
            let parsed = HeaderName::from_bytes(n.as_str().to_uppercase().as_bytes()).unwrap();
            assert_eq!(hop_by_hop_index(&parsed), Some(i), "{n} as parsed");
        }
        assert_eq!(hop_by_hop_index(&header::CONTENT_TYPE), None);
        assert_eq!(
            hop_by_hop_index(&HeaderName::from_static("x-keep-alive")),
            None
        );
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
    #[test]
    fn response_hop_by_hop_headers_are_removed_but_a_switch_keeps_its_upgrade() {
        let mut h = map(&[
            ("connection", "Keep-Alive, X-Secret, close"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("content-type", "text/plain"),
        ]);
        let mut plain = h.clone();
        response_headers(&mut plain, false);
        let names: Vec<&str> = plain.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type"]);

        h.insert("connection", HeaderValue::from_static("Upgrade, X-Secret"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        response_headers(&mut h, true);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["connection", "content-type", "upgrade"]);
    }
}
