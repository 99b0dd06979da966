//! Signed-in requests without an IdP round trip: sessions are minted with the config's
//! cookie key, as a sign-in would make them.

mod support;

use futures::StreamExt;
use portcullis::auth::session::{now, CookieJar, CookieKey, Session};
use portcullis::policy::Identity;
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";

fn cookie_for(host: &str, expires: u64) -> String {
    use base64::Engine;
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(SECRET)
        .unwrap()
        .try_into()
        .unwrap();
    let s = Session {
        id: rand_id(),
        identity: Identity {
            iss: "https://idp.test".into(),
            sub: "u-alice".into(),
            email: Some("alice@example.com".into()),
            email_verified: Some(true),
            groups: vec!["staff".into()],
            claims: Default::default(),
        },
        expires,
        id_token_exp: expires,
        refresh_token: None,
        id_token: None,
    };
    let sealed = CookieKey::new(&key)
        .unwrap()
        .seal("session", host, &s)
        .unwrap();
    let jar = CookieJar {
        name: "_portcullis".into(),
        domain: None,
        max_age: Duration::from_secs(60),
    };
    jar.set_session(&sealed, &http::HeaderMap::new())
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn rand_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id).unwrap();
    id
}

async fn proxy(echo: &Echo) -> Proxy {
    Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\n\
         jwt_claims_headers:\n  X-Forwarded-User: issuer_subject\n  X-Team: groups\n\
         routes:\n  - from: http://app.test\n    to: {}\n    allow_websockets: true\n    pass_identity_headers: true\n    allowed_domains: [example.com]\n",
        echo.url()
    ))
    .await
}

#[tokio::test]
async fn a_signed_in_user_reaches_the_upstream_with_identity_headers_no_client_can_forge() {
    let echo = Echo::start("a").await;
    let p = proxy(&echo).await;
    let cookie = cookie_for("app.test", now() + 600);
    let r = get(
        p.addr(),
        "app.test",
        "/x",
        &[
            ("cookie", &cookie),
            ("x-forwarded-user", "https://idp.test#root"),
            ("x_team", "admins"),
            ("x-portcullis-claim-email", "root@x"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = r.seen();
    assert_eq!(s.all("x-forwarded-user"), vec!["https://idp.test#u-alice"]);
    assert_eq!(s.all("x-team"), vec!["staff"]);
    assert_eq!(s.header("x_team"), None);
    assert_eq!(s.all("x-portcullis-claim-email"), vec!["alice@example.com"]);
    assert_eq!(
        s.header("x-portcullis-jwt-assertion")
            .map(|a| a.split('.').count()),
        Some(3)
    );
    // Without the cookie: 401, and nothing reached the upstream.
    let hits = echo.hits();
    assert_eq!(
        get(
            p.addr(),
            "app.test",
            "/x",
            &[("accept", "application/json")]
        )
        .await
        .status,
        401
    );
    assert_eq!(echo.hits(), hits);
    // An expired session is no session.
    let old = cookie_for("app.test", now() - 1);
    assert_eq!(
        get(p.addr(), "app.test", "/x", &[("cookie", &old)])
            .await
            .status,
        401
    );
}

async fn close_reason(ws: &mut Ws, within: Duration) -> Option<(u16, String)> {
    let end = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(end, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return Some((f.code.into(), f.reason.to_string()))
            }
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn a_websocket_is_closed_with_a_reason_when_its_session_expires() {
    let echo = Echo::start("a").await;
    let p = proxy(&echo).await;
    let cookie = cookie_for("app.test", now() + 2);
    let mut ws = ws_connect(
        p.addr(),
        "app.test",
        "/ws",
        &[("origin", "http://app.test"), ("cookie", &cookie)],
    )
    .await
    .expect("upgrade");
    assert_eq!(ws_roundtrip(&mut ws, "hi").await.as_deref(), Some("hi"));
    let (code, reason) = close_reason(&mut ws, Duration::from_secs(6))
        .await
        .expect("no close frame at session expiry");
    assert_eq!(code, 1008);
    assert!(reason.contains("sign in"), "{reason}");
}

#[tokio::test]
async fn signing_out_closes_the_sessions_open_websockets_and_no_others() {
    let echo = Echo::start("a").await;
    let p = proxy(&echo).await;
    let mine = cookie_for("app.test", now() + 600);
    let other = cookie_for("app.test", now() + 600);
    let mut ws = ws_connect(
        p.addr(),
        "app.test",
        "/ws",
        &[("origin", "http://app.test"), ("cookie", &mine)],
    )
    .await
    .expect("upgrade");
    let mut ws2 = ws_connect(
        p.addr(),
        "app.test",
        "/ws",
        &[("origin", "http://app.test"), ("cookie", &other)],
    )
    .await
    .expect("upgrade");
    let r = get(
        p.addr(),
        "app.test",
        "/.portcullis/sign_out",
        &[("cookie", &mine)],
    )
    .await;
    assert_eq!(r.status, 302);
    let (code, reason) = close_reason(&mut ws, Duration::from_secs(3))
        .await
        .expect("no close frame at sign-out");
    assert_eq!(code, 1008);
    assert!(reason.contains("signed out"), "{reason}");
    assert_eq!(
        ws_roundtrip(&mut ws2, "still").await.as_deref(),
        Some("still")
    );
    // The signed-out cookie is refused from now on.
    assert_eq!(
        get(p.addr(), "app.test", "/x", &[("cookie", &mine)])
            .await
            .status,
        401
    );
}
