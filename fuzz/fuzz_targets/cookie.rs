//! Any Cookie header: split into its parts, reassembled and opened, it is a session only if
//! sealed with the key. And a real sealed session among fuzzed neighbouring cookies: it is found
//! and opens, and the headers an upstream gets carry none of Portcullis's cookies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::auth::session::{CookieJar, CookieKey, Session};
use portcullis::http::cookie::pairs;
use portcullis::policy::Identity;
use portcullis::proxy::headers::{request_headers, Forwarding};
use std::sync::OnceLock;
use std::time::Duration;

const HOST: &str = "a.test";

fn jar() -> CookieJar {
    CookieJar::new("_p", None, Duration::from_secs(60))
}

fn key() -> CookieKey {
    CookieKey::new(&[9; 32]).unwrap()
}

/// A real session's cookies (`name=value` pairs, a chunk or more), made once.
fn real() -> &'static Vec<String> {
    static REAL: OnceLock<Vec<String>> = OnceLock::new();
    REAL.get_or_init(|| {
        let s = Session {
            id: [7; 16],
            identity: Identity {
                sub: "u".into(),
                // Large enough to take two chunks.
                groups: vec!["g".repeat(3000)],
                ..Default::default()
            }
            .into(),
            expires: u64::MAX / 2,
            id_token_exp: u64::MAX / 2,
            refresh_token: None,
        };
        let sealed = key().seal("session", HOST, &s).unwrap();
        jar()
            .set_session(&sealed, &http::HeaderMap::new())
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect()
    })
}

/// Is this pair one of Portcullis's cookies, under any prefix (what must never reach an
/// upstream)?
fn portcullis_cookie(pair: &[u8]) -> bool {
    let name = pair[..pair.iter().position(|&b| b == b'=').unwrap_or(pair.len())].trim_ascii();
    let name = name
        .strip_prefix(b"__Host-")
        .or_else(|| name.strip_prefix(b"__Secure-"))
        .unwrap_or(name);
    name == b"_p" || name.strip_prefix(b"_p_").is_some_and(|r| !r.is_empty())
}

fn any_header(data: &[u8]) {
    let mut parts = 0;
    for p in pairs(data) {
        assert!(!p.is_empty() && !p.contains(&b';') && p.trim_ascii() == p);
        parts += 1;
    }
    assert!(parts <= data.len());
    let Ok(v) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut h = http::HeaderMap::new();
    h.insert(http::header::COOKIE, v);
    if let Some(text) = jar().read_session(&h) {
        // Forging AES-GCM by chance is not a thing a fuzzer finds: this must stay None.
        assert!(key().open::<Session>("session", HOST, &text).is_none());
    }
}

fn among_neighbours(data: &[u8]) {
    // `data` split in two: the cookies before the session's and those after.
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (before, after) = data.split_at(cut);
    // A neighbour under the session's own name is another session (the browser sends the
    // first it holds); that case is not this property's.
    if pairs(before)
        .chain(pairs(after))
        .any(|p| p.starts_with(b"__Host-_p=") || p.starts_with(b"__Host-_p_"))
    {
        return;
    }
    let mut header = before.to_vec();
    for c in real() {
        header.extend_from_slice(b"; ");
        header.extend_from_slice(c.as_bytes());
    }
    header.extend_from_slice(b"; ");
    header.extend_from_slice(after);
    let Ok(v) = http::HeaderValue::from_bytes(&header) else {
        return;
    };
    let mut h = http::HeaderMap::new();
    h.insert(http::header::COOKIE, v);
    let text = jar()
        .read_session(&h)
        .expect("the session is found among its neighbours");
    let s: Session = key()
        .open("session", HOST, &text)
        .expect("the session opens among its neighbours");
    assert_eq!(s.id, [7; 16]);
    let peer = http::HeaderValue::from_static("192.0.2.1");
    let up = request_headers(
        h,
        Forwarding {
            forwarded_for: &peer,
            https: true,
            authority: HOST,
            host_header: http::HeaderValue::from_static("up"),
            websocket: false,
            cookie_name: "_p",
            owned_cookies: &[],
            owned: &[],
            remove: &[],
            set: &[],
            granted: &[],
            identity: Vec::new(),
        },
    );
    for (name, value) in up.iter() {
        if name == http::header::COOKIE {
            assert!(
                !pairs(value.as_bytes()).any(portcullis_cookie),
                "a Portcullis cookie reaches the upstream: {value:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    any_header(data);
    among_neighbours(data);
});
