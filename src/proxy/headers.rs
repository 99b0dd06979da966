//! What the upstream receives: hop-by-hop headers removed, forwarding context set by the
//! proxy alone, and every identity header a client might forge stripped before Portcullis
//! adds its own.

use crate::http::cookie::pairs;
use crate::http::hop::{folded, is_framing_or_hop_by_hop, HopByHop};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

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
    /// Cookie names a route sets in its `Cookie` header: a client's cookie of that name is
    /// never passed on, on any route.
    pub owned_cookies: &'a [String],
    /// Names the proxy sets for this route (claims headers...), stripped from the client's.
    pub owned: &'a [HeaderName],
    pub remove: &'a [HeaderName],
    pub set: &'a [(HeaderName, HeaderValue)],
    /// The headers of the grant the policy chose for this user (after `set`: a grant's value
    /// wins over the route's for the same name).
    pub granted: &'a [(HeaderName, HeaderValue)],
    /// Identity headers for a signed-in user (assertion, claims), added last.
    pub identity: Vec<(HeaderName, HeaderValue)>,
}

/// The headers an upstream gets: the client's, less what must not pass, then what the proxy
/// sets. Only [`request_headers`] makes one. The client's map is kept as it came and read
/// through [`UpstreamHeaders::iter`] while the request head is written: no second map is
/// built per request (eight inserts and a table growth, docs/performance.md).
pub struct UpstreamHeaders<'a> {
    client: HeaderMap,
    hop: HopByHop,
    owned: &'a [HeaderName],
    remove: &'a [HeaderName],
    /// The client's cookies rewritten ([`forwarded_cookies`]): one header or none instead of
    /// the client's; `None` when the client's pass as they came.
    cookies: Option<Option<HeaderValue>>,
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

/// What the upstream client writes: the fields as [`UpstreamHeaders::iter`] gives them.
impl crate::upstream::Fields for UpstreamHeaders<'_> {
    fn fields(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.iter()
    }

    fn client_host(&self) -> &HeaderValue {
        &self.host
    }

    fn websocket(&self) -> bool {
        self.websocket
    }

    fn to_map(&self, host: &HeaderValue) -> HeaderMap {
        UpstreamHeaders::to_map(self, host)
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
        Some(None)
    } else {
        forwarded_cookies(&h, fw.cookie_name, fw.owned_cookies)
    };
    let mut added = Added {
        list: Vec::with_capacity(5 + fw.set.len() + fw.granted.len() + fw.identity.len()),
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
    for (k, v) in fw.set.iter().chain(fw.granted) {
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

/// The client's cookies as the upstream gets them, or `None` when they pass as they came (one
/// Cookie header with nothing to take out). Otherwise one header, or none when nothing is
/// left: without Portcullis's cookies ([`is_session_cookie`]) and without those a route sets
/// (`owned`), and joined by "; " when the client sent several (HTTP/2 sends cookies in
/// crumbs, which an HTTP/1.1 upstream must get as one header, RFC 9113 §8.2.3). One pass
/// over each header: a browser's can be kilobytes.
fn forwarded_cookies(h: &HeaderMap, name: &str, owned: &[String]) -> Option<Option<HeaderValue>> {
    let all = h.get_all(header::COOKIE);
    let mut headers = all.iter().peekable();
    headers.peek()?;
    let mut found = false;
    let mut count = 0;
    let mut kept = Vec::new();
    for v in headers {
        count += 1;
        for c in pairs(v.as_bytes()) {
            if is_session_cookie(c, name) || is_owned_cookie(c, owned) {
                found = true;
                continue;
            }
            if !kept.is_empty() {
                kept.extend_from_slice(b"; ");
            }
            kept.extend_from_slice(c);
        }
    }
    if !found && count == 1 {
        return None;
    }
    if kept.is_empty() {
        return Some(None);
    }
    // The client's own bytes, which were valid values, joined by "; ": valid again.
    Some(HeaderValue::from_maybe_shared(bytes::Bytes::from(kept)).ok())
}

/// Is this `name=value` pair's name one a route sets in its `Cookie` header? Compared as
/// frameworks read cookie names: PHP percent-decodes them and turns `.` and ` ` into `_`, so
/// `v%69aroute` and `via.route` are `viaroute` and `via_route` there.
fn is_owned_cookie(pair: &[u8], owned: &[String]) -> bool {
    if owned.is_empty() {
        return false;
    }
    let n = fold_cookie_name(pair[..memchr::memchr(b'=', pair).unwrap_or(pair.len())].trim_ascii());
    owned.iter().any(|o| fold_cookie_name(o.as_bytes()) == n)
}

/// A cookie name percent-decoded, with `.`, ` ` and `[` as `_`.
fn fold_cookie_name(name: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        let mut b = name[i];
        if b == b'%' && i + 2 < name.len() {
            if let (Some(h), Some(l)) = (hex(name[i + 1]), hex(name[i + 2])) {
                b = h * 16 + l;
                i += 2;
            }
        }
        out.push(if matches!(b, b'.' | b' ' | b'[') {
            b'_'
        } else {
            b
        });
        i += 1;
    }
    out
}

/// Removes the upstream's `Set-Cookie` headers that would set or clear one of Portcullis's
/// own cookies (the session, its chunks, the login and sign-out cookies, in any spelling
/// [`is_session_cookie`] reads): an application behind Portcullis does not decide who is
/// signed in. Looked at only when the response sets cookies.
pub fn strip_own_set_cookies(h: &mut HeaderMap, cookie_name: &str) {
    let own = |v: &HeaderValue| {
        let b = v.as_bytes();
        let pair = &b[..memchr::memchr(b';', b).unwrap_or(b.len())];
        // A nameless cookie (`=__Host-_portcullis=x`) is sent back by some browsers as
        // `__Host-_portcullis=x`: its value is judged as a pair too.
        let nameless = pair.trim_ascii_start().strip_prefix(b"=");
        is_session_cookie(pair, cookie_name)
            || nameless.is_some_and(|p| is_session_cookie(p, cookie_name))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::hop::folded_name;

    static PEER: HeaderValue = HeaderValue::from_static("203.0.113.9");

    fn fw<'a>(owned: &'a [HeaderName]) -> Forwarding<'a> {
        Forwarding {
            forwarded_for: &PEER,
            https: true,
            authority: "app.example.com",
            host_header: HeaderValue::from_static("upstream:8080"),
            websocket: false,
            cookie_name: "_portcullis",
            owned_cookies: &[],
            owned,
            remove: &[],
            set: &[],
            granted: &[],
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
                ("cookie", b"a=1; b=2"),
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
    fn owned_cookie_names_are_compared_as_php_reads_them() {
        let owned = ["via_route".to_string(), "abcd".to_string()];
        let kept = |pair: &str| !super::is_owned_cookie(pair.as_bytes(), &owned);
        // Percent-decoded, `.`, ` ` and `[` read as `_`.
        for taken in [
            "via_route=1",
            "v%69a_route=1",
            "via.route=1",
            "via%2eroute=1",
            "via[route=1",
            " abcd =2",
            "%61bcd=3",
        ] {
            assert!(!kept(taken), "{taken}");
        }
        // Only a `%` starts an escape, and only two hex digits after it make one.
        for pair in [
            "xbcd=1",
            "abc=1",
            "via_routes=1",
            "%4=1",
            "ab%6=1",
            "%=1",
            "a%zzcd=1",
            "viaXroute=1",
        ] {
            assert!(kept(pair), "{pair}");
        }
        assert_eq!(super::fold_cookie_name(b"%41%4"), b"A%4");
        assert_eq!(super::fold_cookie_name(b"%7e%7E"), b"~~");
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
        // Several Cookie headers (HTTP/2 crumbs) reach the upstream as one, in their order.
        let h = map(&[
            ("cookie", "x=1"),
            ("cookie", "_portcullis=s; y=2"),
            ("cookie", "z=3"),
        ]);
        let out = upstream(h, fw(&[]));
        let cookies: Vec<_> = out.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["x=1; y=2; z=3"]);
        let out = upstream(map(&[("cookie", "a=1"), ("cookie", "b=2")]), fw(&[]));
        let cookies: Vec<_> = out.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
        // Without the session's cookies, the headers pass as they came.
        let out = upstream(map(&[("cookie", "a=1;b=2")]), fw(&[]));
        assert_eq!(out["cookie"], "a=1;b=2");
    }
}
