//! The request target → the one normalized path that routing, policy and the upstream all see.
//!
//! Dot-segments are resolved and repeated slashes merged; percent-encoded unreserved
//! characters are decoded (so `%2e%2e` is `..` before it is resolved); other escapes are kept,
//! upper-cased. An encoded `/`, `\` or NUL, a raw `\` or `#`, a control character, bad or
//! overlong escapes, and path parameters on dot-segments (`/..;x/`, `/..%3B/`) are refused.

use http::{HeaderMap, Method, Uri};
use std::fmt;

/// Why a request target was refused (always a 400).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetError {
    NotOriginForm,
    EncodedSeparator,
    BadEscape,
    Forbidden(char),
    NotUtf8,
    DotSegmentParameter,
    MissingHost,
    DuplicateHost,
    BadHost,
    HostMismatch,
    /// `prefix_rewrite` would send a path that the upstream resolves to another one.
    RewriteNotNormal,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            TargetError::NotOriginForm => {
                "the request target must be a path (or an absolute URL for this host)"
            }
            TargetError::EncodedSeparator => "encoded `/`, `\\` or NUL in the path",
            TargetError::BadEscape => "malformed percent-escape in the path",
            TargetError::Forbidden('\\') => "a backslash in the path",
            TargetError::Forbidden('#') => "a `#` in the request target",
            TargetError::Forbidden(_) => "a control character in the path",
            TargetError::NotUtf8 => "the path does not decode to UTF-8",
            TargetError::DotSegmentParameter => "a parameter on a dot-segment (`..;`)",
            TargetError::MissingHost => "no Host header",
            TargetError::DuplicateHost => "more than one Host header",
            TargetError::BadHost => "malformed Host",
            TargetError::HostMismatch => {
                "the request target names another host than the Host header"
            }
            TargetError::RewriteNotNormal => {
                "the rewritten path would have a dot-segment or an empty segment"
            }
        };
        f.write_str(s)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes a raw (still percent-encoded) path; see the module docs.
pub fn normalize_path(raw: &str) -> Result<String, TargetError> {
    if is_plain(raw) {
        return Ok(raw.to_string());
    }
    normalize_path_fully(raw)
}

/// A path that is already normal, as most are: it starts with `/`, has no escapes, no
/// `\`, `#` or control characters, no empty segment but a trailing one, and no segment
/// starting with `.` (so no dot-segment, with or without parameters). Normalizing it gives it
/// back unchanged (the `path` fuzz target checks this against [`normalize_path_fully`]).
fn is_plain(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.first() == Some(&b'/')
        && b.iter()
            .all(|&c| (0x20..0x7f).contains(&c) && !matches!(c, b'%' | b'\\' | b'#'))
        && !b
            .windows(2)
            .any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
}

/// [`normalize_path`] without its shortcut for paths that are already normal.
#[doc(hidden)]
pub fn normalize_path_fully(raw: &str) -> Result<String, TargetError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(TargetError::NotOriginForm);
    }
    // Pass 1: decode unreserved escapes, check the rest, and check that the fully decoded
    // path is UTF-8 without control characters (overlong forms are not UTF-8).
    let mut semi = String::with_capacity(raw.len());
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (h, l) = match (
                    bytes.get(i + 1).and_then(|&x| hex(x)),
                    bytes.get(i + 2).and_then(|&x| hex(x)),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(TargetError::BadEscape),
                };
                let d = h << 4 | l;
                if d == b'/' || d == b'\\' || d == 0 {
                    return Err(TargetError::EncodedSeparator);
                }
                if d < 0x20 || d == 0x7f {
                    return Err(TargetError::Forbidden('\u{1}'));
                }
                decoded.push(d);
                if unreserved(d) {
                    semi.push(d as char);
                } else {
                    semi.push('%');
                    semi.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                    semi.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
                }
                i += 3;
            }
            b'\\' => return Err(TargetError::Forbidden('\\')),
            b'#' => return Err(TargetError::Forbidden('#')),
            _ if b < 0x20 || b == 0x7f => return Err(TargetError::Forbidden('\u{1}')),
            _ if b >= 0x80 => return Err(TargetError::NotUtf8),
            _ => {
                decoded.push(b);
                semi.push(b as char);
                i += 1;
            }
        }
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(TargetError::NotUtf8);
    }
    // Pass 2: segments.
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in semi.split('/').skip(1) {
        trailing_slash = false;
        // A parameter written `;` or `%3B` (an upstream that decodes before it strips path
        // parameters sees the same `..`).
        let bare = seg
            .split(';')
            .next()
            .and_then(|b| b.split("%3B").next())
            .unwrap_or("");
        match seg {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                out.pop();
                trailing_slash = true;
            }
            _ if (bare == "." || bare == "..") && seg != bare => {
                return Err(TargetError::DotSegmentParameter)
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(semi.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

/// The path sent upstream by a route with `prefix_rewrite`: the matched `prefix` of the
/// normalized `path` (or its leading `/`, for a route without one) replaced by `rewrite`.
///
/// A prefix match need not end at a segment boundary (`prefix: /static` matches
/// `/static../admin`), so the joined path can gain a dot-segment (`/assets/../admin`) that
/// the upstream would resolve to a path no route or policy decided on. The result must
/// therefore be normalized itself: a path that [`normalize_path`] would change (a `.` or `..`
/// segment in any spelling, `..;x`, an empty segment) is refused, never passed on.
pub fn rewrite_prefix(prefix: &str, rewrite: &str, path: &str) -> Result<String, TargetError> {
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let out = match (rewrite.ends_with('/'), rest.starts_with('/')) {
        (true, true) => format!("{rewrite}{}", &rest[1..]),
        (false, false) if !rest.is_empty() && prefix.ends_with('/') => format!("{rewrite}/{rest}"),
        _ => format!("{rewrite}{rest}"),
    };
    match normalize_path_fully(&out) {
        Ok(n) if n == out => Ok(out),
        _ => Err(TargetError::RewriteNotNormal),
    }
}

/// Where a request goes, as decided once for routing, policy and forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Lower-case, without a trailing dot.
    pub host: String,
    pub port: Option<u16>,
    /// The Host as the client sent it (for `X-Forwarded-Host` and `preserve_host_header`).
    pub authority: String,
    pub path: String,
    pub query: Option<String>,
}

impl Target {
    /// Path and query as forwarded.
    pub fn path_and_query(&self, path: &str) -> String {
        match &self.query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        }
    }
}

pub fn parse_host(s: &str) -> Result<(String, Option<u16>), TargetError> {
    if s.is_empty() || s.contains('@') {
        return Err(TargetError::BadHost);
    }
    let a: http::uri::Authority = s.parse().map_err(|_| TargetError::BadHost)?;
    let host = host_of(a.as_str());
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err(TargetError::BadHost);
    }
    Ok((host, a.port_u16()))
}

/// The host of a valid authority without userinfo (refused before): `[…]` for IPv6, else up to
/// the port. `Authority::host` gives the same, but looks for userinfo from the end first.
fn host_of(a: &str) -> &str {
    if a.starts_with('[') {
        a.find(']').map_or(a, |i| &a[..=i])
    } else {
        a.split_once(':').map_or(a, |(h, _)| h)
    }
}

/// Reads and checks the request target and Host of a request.
pub fn parse(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Target, TargetError> {
    let _ = method;
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(TargetError::DuplicateHost);
    }
    let host_header = match host_header {
        Some(h) => Some(h.to_str().map_err(|_| TargetError::BadHost)?),
        None => None,
    };
    let authority = match (uri.authority(), host_header) {
        (Some(a), Some(h)) => {
            // Absolute form (or HTTP/2 :authority) and Host must agree.
            if !a.as_str().eq_ignore_ascii_case(h) {
                return Err(TargetError::HostMismatch);
            }
            a.as_str()
        }
        (Some(a), None) => a.as_str(),
        (None, Some(h)) => h,
        (None, None) => return Err(TargetError::MissingHost),
    };
    if let Some(s) = uri.scheme_str() {
        if s != "http" && s != "https" {
            return Err(TargetError::NotOriginForm);
        }
    }
    let (host, port) = parse_host(authority)?;
    let raw_path = uri.path();
    let path = normalize_path(raw_path)?;
    let query = uri.query().map(str::to_string);
    if query.as_deref().is_some_and(|q| q.contains('#')) {
        return Err(TargetError::Forbidden('#'));
    }
    Ok(Target {
        host,
        port,
        authority: authority.to_string(),
        path,
        query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a//b", "/a/b"),
            ("//a///b//", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../etc", "/etc"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/p/.%2e/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3bb", "/a%3Bb"),
            ("/admin;x", "/admin;x"),
            ("/a/b;c/d", "/a/b;c/d"),
            ("/%7Euser", "/~user"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn the_shortcut_for_normal_paths_changes_no_outcome() {
        let cases = [
            "/",
            "/a",
            "/a/",
            "/a/b;c/d",
            "/admin;x",
            "/a b",
            "/.well-known/x",
            "/a/.b",
            "/a/..",
            "/a/..;x/b",
            "/a//b",
            "//",
            "/a%2e",
            "a/b",
            "",
            "/a\\b",
            "/a#b",
            "/a\u{7f}",
            "/a/b/",
            "/~user/x-y_z",
            "/a;/b",
            "/;",
            "/a/...",
            "/a/.../b",
        ];
        for raw in cases {
            assert_eq!(normalize_path(raw), normalize_path_fully(raw), "{raw:?}");
        }
        assert!(is_plain("/chat/session") && is_plain("/") && is_plain("/a/"));
        assert!(!is_plain("/a/./b") && !is_plain("/a//b") && !is_plain("/%61"));
    }

    #[test]
    fn refuses_ambiguous_paths() {
        let cases = [
            ("/a%2fb", TargetError::EncodedSeparator),
            ("/a%2Fb", TargetError::EncodedSeparator),
            ("/a%5cb", TargetError::EncodedSeparator),
            ("/a%00", TargetError::EncodedSeparator),
            ("/a\\b", TargetError::Forbidden('\\')),
            ("/a#b", TargetError::Forbidden('#')),
            ("/a%zz", TargetError::BadEscape),
            ("/a%2", TargetError::BadEscape),
            ("/a%", TargetError::BadEscape),
            ("/%c0%ae%c0%ae/admin", TargetError::NotUtf8),
            ("/%ff", TargetError::NotUtf8),
            ("/a%0a", TargetError::Forbidden('\u{1}')),
            ("/public/..;/admin", TargetError::DotSegmentParameter),
            ("/public/.;x/admin", TargetError::DotSegmentParameter),
            ("/public/..%3B/admin", TargetError::DotSegmentParameter),
            ("/public/..%3b/admin", TargetError::DotSegmentParameter),
            ("/public/%2e%2e%3bx/admin", TargetError::DotSegmentParameter),
            ("*", TargetError::NotOriginForm),
            ("a/b", TargetError::NotOriginForm),
            ("", TargetError::NotOriginForm),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input), Err(want), "{input}");
        }
    }

    #[test]
    fn a_rewrite_replaces_the_prefix_and_never_makes_a_dot_segment() {
        let ok = [
            ("/static", "/assets/", "/static/x/y", "/assets/x/y"),
            ("/static", "/assets/", "/static", "/assets/"),
            ("/static", "/assets/", "/staticfoo", "/assets/foo"),
            ("/static/", "/assets", "/static/x", "/assets/x"),
            ("/static/", "/", "/static/x;y/z", "/x;y/z"),
            ("/", "/base", "/x", "/base/x"),
            ("/app", "/", "/app", "/"),
            ("/a", "/b", "/a.", "/b."),
            ("/a", "/b", "/a..x", "/b..x"),
        ];
        for (prefix, rw, path, want) in ok {
            assert_eq!(
                rewrite_prefix(prefix, rw, path).as_deref(),
                Ok(want),
                "{prefix} {rw} {path}"
            );
        }
        let refused = [
            ("/static", "/assets/", "/static../admin/x"),
            ("/static", "/assets/", "/static.."),
            ("/static", "/assets/", "/static."),
            ("/static", "/assets/", "/static..;x/admin"),
            ("/static", "/assets/", "/static.;x/admin"),
            ("/static", "/assets", "/static/../admin"),
            ("/a", "/b/", "/a./x"),
            ("/a", "/b/", "/a//x"),
        ];
        for (prefix, rw, path) in refused {
            assert_eq!(
                rewrite_prefix(prefix, rw, path),
                Err(TargetError::RewriteNotNormal),
                "{prefix} {rw} {path}"
            );
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for p in ["/a/../b//c/./d/", "/%2e%2e/x%20y", "/x;y/z"] {
            let once = normalize_path(p).unwrap();
            assert_eq!(normalize_path(&once).unwrap(), once);
        }
    }

    #[test]
    fn host_of_is_the_authoritys_host() {
        for a in [
            "a.test",
            "A.Test.:8080",
            "a.test:",
            "127.0.0.1:443",
            "[::1]",
            "[::1]:443",
            "[fe80::1%25eth0]:80",
            "xn--bcher-kva.example",
        ] {
            let parsed: http::uri::Authority = a.parse().unwrap();
            assert_eq!(host_of(parsed.as_str()), parsed.host(), "{a}");
        }
    }

    fn hm(hosts: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in hosts {
            h.append(http::header::HOST, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn host_rules() {
        let get = Method::GET;
        let t = parse(
            &get,
            &"/x?q=1".parse().unwrap(),
            &hm(&["App.Example.com.:8443"]),
        )
        .unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str(), t.query.as_deref()),
            ("app.example.com", Some(8443), "/x", Some("q=1"))
        );
        assert_eq!(
            parse(&get, &"/".parse().unwrap(), &hm(&[])),
            Err(TargetError::MissingHost)
        );
        assert_eq!(
            parse(&get, &"/".parse().unwrap(), &hm(&["a", "b"])),
            Err(TargetError::DuplicateHost)
        );
        assert_eq!(
            parse(
                &get,
                &"http://evil.test/".parse().unwrap(),
                &hm(&["app.example.com"])
            ),
            Err(TargetError::HostMismatch)
        );
        assert!(parse(
            &get,
            &"https://app.example.com/x".parse().unwrap(),
            &hm(&["app.example.com"])
        )
        .is_ok());
        assert_eq!(
            parse(&get, &"/".parse().unwrap(), &hm(&["user@app"])),
            Err(TargetError::BadHost)
        );
    }
}
