//! For bench/run: writes a self-signed certificate and key for `localhost` into DIR and prints a
//! `Cookie` header value holding a valid session for HOST, sealed with the given cookie secret,
//! as large as a real one (its refresh token included; the ID token has a cookie of its own that
//! only the sign-out endpoint is sent).
//!
//! usage: bench_setup DIR HOST COOKIE_SECRET_BASE64

use portcullis::auth::session::{CookieJar, CookieKey, Session};
use portcullis::clock::now;
use portcullis::policy::Identity;
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, host, secret] = args.as_slice() else {
        return Err("usage: bench_setup DIR HOST COOKIE_SECRET_BASE64".into());
    };
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".into()])?;
    std::fs::write(format!("{dir}/cert.pem"), ck.cert.pem())?;
    std::fs::write(format!("{dir}/key.pem"), ck.signing_key.serialize_pem())?;
    use base64::Engine;
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(secret)?
        .try_into()
        .map_err(|_| "the cookie secret is not 32 bytes")?;
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| "no randomness")?;
    let s = Session {
        id,
        identity: Identity {
            iss: "https://idp.example.com".into(),
            sub: "248289761001".into(),
            email: Some("alice@example.com".into()),
            email_verified: Some(true),
            groups: vec!["staff".into(), "openclaw-admins".into()],
            claims: Default::default(),
            ..Default::default()
        }
        .into(),
        expires: now() + 24 * 3600,
        id_token_exp: now() + 24 * 3600,
        // What a sign-in with a real IdP stores: its refresh token (oidc-provider's are 43
        // characters), so the cookie is as large as a real one.
        refresh_token: Some(random_text(43)),
    };
    let sealed = CookieKey::new(&key)?
        .seal("session", host, &s)
        .ok_or("cannot seal the session")?;
    let jar = CookieJar::new("_portcullis", None, Duration::from_secs(24 * 3600));
    let cookie = jar
        .set_session(&sealed, &http::HeaderMap::new())
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
        .collect::<Vec<_>>()
        .join("; ");
    println!("{cookie}");
    Ok(())
}

/// `n` random base64url characters (token-shaped filler).
fn random_text(n: usize) -> String {
    use base64::Engine;
    let mut b = vec![0u8; n];
    let _ = aws_lc_rs::rand::fill(&mut b);
    let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&b);
    t[..n].to_string()
}
