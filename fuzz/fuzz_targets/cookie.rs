//! Any Cookie header: split into its parts, reassembled and opened, it is a session only if
//! sealed with the key.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::auth::session::{pairs, CookieJar, CookieKey, Session};

fuzz_target!(|data: &[u8]| {
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
    let jar = CookieJar {
        name: "_p".into(),
        domain: None,
        max_age: std::time::Duration::from_secs(60),
    };
    if let Some(text) = jar.read_session(&h) {
        let key = CookieKey::new(&[9; 32]).unwrap();
        // Forging AES-GCM by chance is not a thing a fuzzer finds: this must stay None.
        assert!(key.open::<Session>("session", "a.test", &text).is_none());
    }
});
