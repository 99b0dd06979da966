//! What the upstream receives: hop-by-hop headers removed, forwarding context set by the
//! proxy alone, and every identity header a client might forge stripped before Portcullis
//! adds its own.

use crate::auth::session::pairs;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Header names as upstream frameworks fold them: lower-case, `_` and `.` read as `-`.
/// Returns `None` when the name needs no folding (the common case, no allocation).
fn folded(name: &str) -> std::borrow::Cow<'_, str> {
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

    fn contains(&self, n: &HeaderName) -> bool {
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

/// Forwarding context a client may claim (only the proxy sets `X-Forwarded-For/Proto/Host`),
/// and identity headers any upstream might trust: never taken from a client. `f` is folded.
/// One string match (the compiler dispatches on length), not a scan of lists.
fn is_context_or_identity(f: &str) -> bool {
    matches!(
        f,
        // Forwarding context.
        "forwarded"
            | "x-real-ip"
            | "x-client-ip"
            | "x-cluster-client-ip"
            | "true-client-ip"
            | "cf-connecting-ip"
            | "fastly-client-ip"
            | "client-ip"
            | "x-rewrite-url"
            | "x-envoy-external-address"
            | "x-envoy-original-path"
            | "front-end-https"
            | "x-url-scheme"
            | "x-scheme"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            // Identity.
            | "remote-user"
            | "x-remote-user"
            | "x-user"
            | "x-email"
            | "x-openclaw-scopes"
            | "authorization-user"
    ) || f.strip_prefix("x-").is_some_and(|rest| {
        // Identity families: x-forwarded-*, x-original-*, x-portcullis-*, x-pomerium-*,
        // x-auth-request-*, x-remote-*.
        [
            "forwarded-",
            "original-",
            "portcullis-",
            "pomerium-",
            "auth-request-",
            "remote-",
        ]
        .iter()
        .any(|p| rest.starts_with(p))
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
fn is_framing_or_hop_by_hop(f: &str) -> bool {
    matches!(f, "content-length" | "host") || hop_by_hop_str_index(f).is_some()
}

/// True for a client header that must never reach an upstream (besides hop-by-hop ones, which
/// [`HopByHop`] finds by their exact names): forgeable context or identity, a framing or
/// hop-by-hop name in another spelling, one of `owned` (the names the route sets) or of
/// `remove` (the names it removes). `name` is lower-case, as a `HeaderName` is; `owned` and
/// `remove` are folded already ([`folded_name`]), and so is each name compared with them.
pub fn is_spoofable(name: &str, owned: &[HeaderName], remove: &[HeaderName]) -> bool {
    let f = folded(name);
    let f = f.as_ref();
    is_context_or_identity(f)
        || is_framing_or_hop_by_hop(f)
        || owned.iter().any(|h| h.as_str() == f)
        || remove.iter().any(|h| h.as_str() == f)
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Context for the forwarded request.
pub struct Forwarding<'a> {
    /// The client's address as an `X-Forwarded-For` value (made once per connection).
    pub forwarded_for: &'a HeaderValue,
    pub https: bool,
    /// The Host the client sent.
    pub authority: &'a str,
    /// `Host` for the upstream when the route preserves the client's (else each upstream's
    /// own is written, see [`UpstreamHeaders::host`]).
    pub host_header: HeaderValue,
    pub websocket: bool,
    /// Session cookie name: its cookies (and chunks) are not passed on.
    pub cookie_name: &'a str,
    /// Names the proxy sets for this route (claims headers...), stripped from the client's.
    pub owned: &'a [HeaderName],
    pub remove: &'a [HeaderName],
    pub set: &'a [(HeaderName, HeaderValue)],
    /// Identity headers for a signed-in user (assertion, claims), added last.
    pub identity: Vec<(HeaderName, HeaderValue)>,
}

/// The headers an upstream gets: the client's, less what must not pass, then what the proxy
/// sets. Only [`request_headers`] makes one. The client's map is kept as it came and read
/// through [`UpstreamHeaders::iter`] while the request head is written: no second map is
/// built per request (eight inserts and a table growth, bench/README.md).
pub struct UpstreamHeaders<'a> {
    client: HeaderMap,
    hop: HopByHop,
    owned: &'a [HeaderName],
    remove: &'a [HeaderName],
    /// The client's Cookie headers without the session's cookies, when they carried one.
    cookies: Option<Vec<HeaderValue>>,
    /// Set by the proxy, each name once: a later setting of a name replaces an earlier one,
    /// and every one replaces the client's headers of that name.
    added: Added,
    host: HeaderValue,
    websocket: bool,
}

static COOKIE: HeaderName = header::COOKIE;

impl UpstreamHeaders<'_> {
    /// Every header the upstream gets but `Host`, in the order written: the client's that
    /// pass, the client's cookies less the session's, then the proxy's.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.client
            .iter()
            .filter(|(n, _)| !self.dropped(n))
            .chain(self.cookies.iter().flatten().map(|v| (&COOKIE, v)))
            .chain(self.added.list.iter().map(|(n, v)| (n, v)))
    }

    /// A client header the upstream never gets: `Host` (the upstream's is written), one the
    /// proxy sets, hop-by-hop or listed in `Connection`, `Content-Length` (the body's own
    /// framing is written), forgeable context or identity, one the route removes, or a Cookie
    /// header that carried the session (written again without it).
    fn dropped(&self, name: &HeaderName) -> bool {
        name == header::HOST
            || (name == header::COOKIE && self.cookies.is_some())
            || self.hop.contains(name)
            || name == header::CONTENT_LENGTH
            || is_spoofable(name.as_str(), self.owned, self.remove)
            || self.added.contains(name)
    }

    /// `Host` when the route preserves the client's; else each upstream's own is written.
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Is this the upgrade of a WebSocket?
    pub fn websocket(&self) -> bool {
        self.websocket
    }

    /// The same headers as a map, `Host` first, for hyper's client (WebSocket upgrades).
    pub fn to_map(&self, host: &HeaderValue) -> HeaderMap {
        let mut m = HeaderMap::with_capacity(self.client.len() + self.added.list.len() + 1);
        m.insert(header::HOST, host.clone());
        for (n, v) in self.iter() {
            m.append(n.clone(), v.clone());
        }
        m
    }
}

/// The headers the proxy sets, each name once, and a mask of bits derived from their names,
/// so that telling whether a client's header is one of them rarely compares names.
struct Added {
    list: Vec<(HeaderName, HeaderValue)>,
    mask: u64,
}

impl Added {
    /// One bit per name, from its length and last byte (enough to tell apart the few names
    /// set per request; equal bits only lead to comparing the names).
    fn bit(name: &HeaderName) -> u64 {
        let b = name.as_str().as_bytes();
        let last = b.last().copied().unwrap_or(0);
        1 << ((b.len() as u32)
            .wrapping_mul(7)
            .wrapping_add(u32::from(last))
            & 63)
    }

    fn contains(&self, name: &HeaderName) -> bool {
        self.mask & Added::bit(name) != 0 && self.list.iter().any(|(n, _)| n == name)
    }

    /// Sets `name` as `HeaderMap::insert` would: in its first place, the last value.
    fn set(&mut self, name: HeaderName, value: HeaderValue) {
        let bit = Added::bit(&name);
        if self.mask & bit != 0 {
            if let Some(slot) = self.list.iter_mut().find(|(n, _)| *n == name) {
                slot.1 = value;
                return;
            }
        }
        self.mask |= bit;
        self.list.push((name, value));
    }
}

/// The upstream request headers, made from the client's: what must not pass is left out
/// (usually nothing but the session cookie), then the forwarding context, the route's headers
/// and the identity headers are set.
pub fn request_headers(h: HeaderMap, fw: Forwarding<'_>) -> UpstreamHeaders<'_> {
    let hop = HopByHop::of(&h);
    // A route that sets or removes `Cookie` owns it whole: none of the client's passes.
    let cookies = if is_spoofable("cookie", fw.owned, fw.remove) {
        Some(Vec::new())
    } else {
        without_session_cookies(&h, fw.cookie_name)
    };
    let mut added = Added {
        list: Vec::with_capacity(5 + fw.set.len() + fw.identity.len()),
        mask: 0,
    };
    // X-Forwarded-Host is the Host the client sent: the same bytes, shared rather than copied.
    let forwarded_host = match h.get(header::HOST) {
        Some(v) if v.as_bytes() == fw.authority.as_bytes() => Some(v.clone()),
        _ => HeaderValue::from_str(fw.authority).ok(),
    };
    if let Some(v) = forwarded_host {
        added.set(X_FORWARDED_HOST, v);
    }
    added.set(X_FORWARDED_FOR, fw.forwarded_for.clone());
    added.set(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if fw.https { "https" } else { "http" }),
    );
    for (k, v) in fw.set {
        added.set(k.clone(), v.clone());
    }
    for (k, v) in fw.identity {
        added.set(k, v);
    }
    if fw.websocket {
        added.set(header::CONNECTION, HeaderValue::from_static("upgrade"));
        added.set(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    UpstreamHeaders {
        client: h,
        hop,
        owned: fw.owned,
        remove: fw.remove,
        cookies,
        added,
        host: fw.host_header,
        websocket: fw.websocket,
    }
}

/// Is this `name=value` pair one of Portcullis's cookies (`NAME`, its chunks `NAME_1`...,
/// the login cookies `NAME_csrf_STATE`, the sign-out cookie `NAME_signout`), with the
/// `__Host-` or `__Secure-` prefix its names carry or without (as an earlier build named
/// them)? Bytes, not text: a Cookie header may carry UTF-8.
fn is_session_cookie(pair: &[u8], name: &str) -> bool {
    let n = pair[..memchr::memchr(b'=', pair).unwrap_or(pair.len())].trim_ascii();
    let n = n
        .strip_prefix(b"__Host-")
        .or_else(|| n.strip_prefix(b"__Secure-"))
        .unwrap_or(n);
    n == name.as_bytes()
        || n.strip_prefix(name.as_bytes())
            .and_then(|r| r.strip_prefix(b"_"))
            .is_some_and(|r| !r.is_empty())
}

/// The request's Cookie headers without the session's cookies, or `None` when they carry none
/// (they pass as they are). One pass over each header: a browser's can be kilobytes.
fn without_session_cookies(h: &HeaderMap, name: &str) -> Option<Vec<HeaderValue>> {
    let mut out: Option<Vec<HeaderValue>> = None;
    for (i, v) in h.get_all(header::COOKIE).iter().enumerate() {
        match strip_cookie(v, name) {
            Stripped::Untouched => {
                if let Some(o) = &mut out {
                    o.push(v.clone());
                }
            }
            Stripped::To(kept) => {
                let o = out.get_or_insert_with(|| {
                    h.get_all(header::COOKIE).iter().take(i).cloned().collect()
                });
                o.extend(kept);
            }
        }
    }
    out
}

/// One Cookie header without the session's cookies.
enum Stripped {
    /// It carries none of them.
    Untouched,
    /// What is left of it, if anything.
    To(Option<HeaderValue>),
}

/// Removes the session cookie (and its chunks `NAME_1`, ... and the login cookies `NAME_csrf_*`)
/// from a Cookie header, in one pass.
fn strip_cookie(value: &HeaderValue, name: &str) -> Stripped {
    let mut found = false;
    let mut kept = Vec::new();
    for c in pairs(value.as_bytes()) {
        if is_session_cookie(c, name) {
            found = true;
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(c);
    }
    if !found {
        return Stripped::Untouched;
    }
    if kept.is_empty() {
        return Stripped::To(None);
    }
    // The client's own bytes, which were a valid value, joined by "; ": valid again.
    Stripped::To(HeaderValue::from_maybe_shared(bytes::Bytes::from(kept)).ok())
}

/// Removes the upstream's `Set-Cookie` headers that would set or clear one of Portcullis's
/// own cookies (the session, its chunks, the login and sign-out cookies, in any spelling
/// [`is_session_cookie`] reads): an application behind Portcullis does not decide who is
/// signed in. Looked at only when the response sets cookies.
pub fn strip_own_set_cookies(h: &mut HeaderMap, cookie_name: &str) {
    let own = |v: &HeaderValue| {
        let b = v.as_bytes();
        let pair = &b[..memchr::memchr(b';', b).unwrap_or(b.len())];
        is_session_cookie(pair, cookie_name)
    };
    if !h.get_all(header::SET_COOKIE).iter().any(own) {
        return;
    }
    let kept: Vec<HeaderValue> = h
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !own(v))
        .cloned()
        .collect();
    h.remove(header::SET_COOKIE);
    for v in kept {
        h.append(header::SET_COOKIE, v);
    }
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

    static PEER: HeaderValue = HeaderValue::from_static("203.0.113.9");

    fn fw<'a>(owned: &'a [HeaderName]) -> Forwarding<'a> {
        Forwarding {
            forwarded_for: &PEER,
            https: true,
            authority: "app.example.com",
            host_header: HeaderValue::from_static("upstream:8080"),
            websocket: false,
            cookie_name: "_portcullis",
            owned,
            remove: &[],
            set: &[],
            identity: Vec::new(),
        }
    }

    /// A client's headers, appended in order.
    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    /// What the upstream gets, as a map (`Host` first), for asserting on.
    fn upstream(h: HeaderMap, fw: Forwarding<'_>) -> HeaderMap {
        let u = request_headers(h, fw);
        u.to_map(u.host())
    }

    #[test]
    fn every_listed_context_and_identity_name_is_spoofable_and_nothing_else() {
        for n in [
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
            "remote-user",
            "x-remote-user",
            "x-user",
            "x-email",
            "x-openclaw-scopes",
            "authorization-user",
            "x-forwarded-anything",
            "x-original-anything",
            "x-portcullis-anything",
            "x-pomerium-anything",
            "x-auth-request-anything",
            "x-remote-anything",
            "x_forwarded_user",
            "x.real.ip",
            // Framing and hop-by-hop names in the spellings a framework folds onto them.
            "transfer_encoding",
            "transfer.encoding",
            "content_length",
            "content.length",
            "keep_alive",
            "proxy_connection",
            "proxy.connection",
            "http2_settings",
            "proxy_authorization",
            "host",
        ] {
            assert!(is_spoofable(n, &[], &[]), "{n}");
        }
        for n in [
            "accept",
            "user-agent",
            "cookie",
            "authorization",
            "sec-fetch-mode",
            "x-requested-with",
            "x-forwarded",
            "x-portcullis",
            "x-",
            "forwarded-for",
            "origin",
            "content-type",
            "transfer-encodings",
            "x-content-length",
        ] {
            assert!(!is_spoofable(n, &[], &[]), "{n}");
        }
        let owned = [HeaderName::from_static("x-team")];
        assert!(is_spoofable("x_team", &owned, &[]));
        assert!(!is_spoofable("x-teams", &owned, &[]));
        assert!(is_spoofable("x.team", &[], &owned));
        // A route's own name spelt with `_` or `.` is folded once, when compiled.
        let owned = [folded_name(&HeaderName::from_static("x_team.id"))];
        assert_eq!(owned[0], "x-team-id");
        for n in ["x-team-id", "x_team_id", "x.team.id", "x_team.id"] {
            assert!(is_spoofable(n, &owned, &[]), "{n}");
            assert!(is_spoofable(n, &[], &owned), "{n}");
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
        let out = upstream(h.clone(), fw(&owned));
        for (n, v) in &out {
            assert_ne!(v, "evil", "{n} passed through");
        }
        assert_eq!(out["x-forwarded-for"], "203.0.113.9");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "app.example.com");
        assert_eq!(out["host"], "upstream:8080");
        assert_eq!(out["accept"], "text/html");
        // The client's Host becomes X-Forwarded-Host; Host is the upstream's.
        h.insert("host", HeaderValue::from_static("app.example.com"));
        let out = upstream(h.clone(), fw(&owned));
        assert_eq!(
            out.get_all("host").iter().collect::<Vec<_>>(),
            ["upstream:8080"]
        );
        assert_eq!(
            out.get_all("x-forwarded-host").iter().collect::<Vec<_>>(),
            ["app.example.com"]
        );
        h.insert("host", HeaderValue::from_static("other.example.com"));
        let out = upstream(h, fw(&owned));
        assert_eq!(
            out["x-forwarded-host"], "app.example.com",
            "the checked authority, not a raw Host"
        );
    }

    #[test]
    fn the_proxy_sets_a_name_once_and_the_last_setting_wins() {
        let h = map(&[
            ("x-route", "client-1"),
            ("x-route", "client-2"),
            ("x-gone", "client"),
            ("x-both", "client"),
            ("accept", "a"),
            ("accept", "b"),
            ("cookie", "a=1; _portcullis=s"),
            ("cookie", "_portcullis_1=t"),
            ("cookie", "b=2"),
        ]);
        let set = [
            (
                HeaderName::from_static("x-route"),
                HeaderValue::from_static("route"),
            ),
            (
                HeaderName::from_static("x-both"),
                HeaderValue::from_static("route"),
            ),
        ];
        let remove = [HeaderName::from_static("x-gone")];
        let mut f = fw(&[]);
        f.set = &set;
        f.remove = &remove;
        f.identity = vec![
            (
                HeaderName::from_static("x-both"),
                HeaderValue::from_static("identity"),
            ),
            (
                HeaderName::from_static("x-id"),
                HeaderValue::from_static("1"),
            ),
            (
                HeaderName::from_static("x-id"),
                HeaderValue::from_static("2"),
            ),
        ];
        let u = request_headers(h, f);
        let written: Vec<(&str, &[u8])> =
            u.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        assert_eq!(
            written,
            [
                ("accept", &b"a"[..]),
                ("accept", b"b"),
                ("cookie", b"a=1"),
                ("cookie", b"b=2"),
                ("x-forwarded-host", b"app.example.com"),
                ("x-forwarded-for", b"203.0.113.9"),
                ("x-forwarded-proto", b"https"),
                ("x-route", b"route"),
                ("x-both", b"identity"),
                ("x-id", b"2"),
            ]
        );
        // The map hyper's client gets for an upgrade holds the same, after `Host`.
        let m = u.to_map(&HeaderValue::from_static("up"));
        let mapped: Vec<(&str, &[u8])> =
            m.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        assert_eq!(mapped[0], ("host", &b"up"[..]));
        assert_eq!(mapped.len(), written.len() + 1);
        for w in &written {
            assert!(mapped.contains(w), "{w:?}");
        }
    }

    #[test]
    fn names_with_the_same_mask_bit_are_told_apart() {
        let (a, b, c) = (
            HeaderName::from_static("x-ab"),
            HeaderName::from_static("x-cb"),
            HeaderName::from_static("x-db"),
        );
        assert_eq!(Added::bit(&a), Added::bit(&b));
        assert_eq!(Added::bit(&a), Added::bit(&c));
        let mut added = Added {
            list: Vec::new(),
            mask: 0,
        };
        added.set(a.clone(), HeaderValue::from_static("1"));
        added.set(b.clone(), HeaderValue::from_static("2"));
        added.set(a.clone(), HeaderValue::from_static("3"));
        assert!(added.contains(&a) && added.contains(&b));
        assert!(!added.contains(&c));
        assert!(!added.contains(&HeaderName::from_static("accept")));
        assert_eq!(
            added.list,
            [
                (a, HeaderValue::from_static("3")),
                (b, HeaderValue::from_static("2"))
            ]
        );
    }

    #[test]
    fn hop_by_hop_and_connection_listed_are_removed() {
        let h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "1"),
        ]);
        let out = upstream(h.clone(), fw(&[]));
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
    fn session_cookies_stay_here() {
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_static(
                "a=1; _portcullis=s; _portcullis_1=t; _portcullis_csrf=u; _portcullis_csrf_AAAAAAAAAAAAAAAAAAAAAA=v; _portcullisx=keep; \
                 __Host-_portcullis=s; __Host-_portcullis_2=t; __Secure-_portcullis=s; __Secure-_portcullis_signout=h; \
                 __Secure-_portcullis_csrf_AAAAAAAAAAAAAAAAAAAAAA=v; __Host-other=keep; __Secure-_portcullisy=keep; \
                 __Other-_portcullis=keep",
            ),
        );
        let out = upstream(h.clone(), fw(&[]));
        assert_eq!(
            out["cookie"],
            "a=1; _portcullisx=keep; __Host-other=keep; __Secure-_portcullisy=keep; __Other-_portcullis=keep"
        );
        let h = map(&[("cookie", "_portcullis=s")]);
        assert!(!upstream(h, fw(&[])).contains_key("cookie"));
        // Headers before the first that carries the session pass too, in their order.
        let h = map(&[
            ("cookie", "x=1"),
            ("cookie", "_portcullis=s; y=2"),
            ("cookie", "z=3"),
        ]);
        let out = upstream(h, fw(&[]));
        let cookies: Vec<_> = out.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["x=1", "y=2", "z=3"]);
        // Without the session's cookies, the headers pass as they came.
        let out = upstream(map(&[("cookie", "a=1;b=2")]), fw(&[]));
        assert_eq!(out["cookie"], "a=1;b=2");
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
