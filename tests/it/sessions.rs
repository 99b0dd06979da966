//! Signed-in requests without an IdP round trip: sessions are minted with the config's
//! cookie key, as a sign-in would make them.

use crate::support::*;
use futures::StreamExt;
use portcullis::auth::session::{CookieJar, CookieKey, Session};
use portcullis::clock::now;
use portcullis::policy::Identity;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

pub(crate) const SECRET: &str = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";

/// alice: `alice@example.com` (verified), group `staff`.
pub(crate) fn alice() -> Identity {
    Identity {
        iss: "https://idp.test".into(),
        sub: "u-alice".into(),
        email: Some("alice@example.com".into()),
        email_verified: Some(true),
        groups: vec!["staff".into()],
        claims: Default::default(),
        ..Default::default()
    }
}

pub(crate) fn cookie_for(host: &str, expires: u64) -> String {
    cookie_with(host, expires, alice())
}

/// The Cookie header of a session for `identity` on `host`, sealed as a sign-in seals it.
pub(crate) fn cookie_with(host: &str, expires: u64, identity: Identity) -> String {
    cookie_in(None, host, expires, identity)
}

/// The Cookie header of a session sealed for `scope` (a host, or the `cookie_domain`), named
/// as a jar with that `cookie_domain` names it.
fn cookie_in(domain: Option<&str>, scope: &str, expires: u64, identity: Identity) -> String {
    cookie_of(domain, scope, &session(expires, identity))
}

/// A fresh session (a new id) for `identity`, ending at `expires`.
pub(crate) fn session(expires: u64, identity: Identity) -> Session {
    Session {
        id: rand_id(),
        identity: identity.into(),
        expires,
        id_token_exp: expires,
        refresh_token: None,
    }
}

/// The config's cookie key (`SECRET`).
pub(crate) fn key() -> CookieKey {
    use base64::Engine;
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(SECRET)
        .unwrap()
        .try_into()
        .unwrap();
    CookieKey::new(&key).unwrap()
}

/// The Cookie header that carries `s`, sealed for `scope` as a sign-in seals it.
pub(crate) fn cookie_of(domain: Option<&str>, scope: &str, s: &Session) -> String {
    let sealed = key().seal("session", scope, s).unwrap();
    let jar = CookieJar::new(
        "_portcullis",
        domain.map(String::from),
        Duration::from_secs(60),
    );
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

#[tokio::test]
async fn with_cookie_domain_a_session_opens_on_every_host_under_it_and_only_with_its_scope() {
    let echo = Echo::start("a").await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\ncookie_domain: example.test\nroutes:\n\
         \x20 - from: http://a.example.test\n    to: {e}\n    allowed_groups: [staff]\n\
         \x20 - from: http://b.example.test\n    to: {e}\n    allowed_groups: [staff]\n",
        e = echo.url()
    ))
    .await;
    let shared = cookie_in(Some("example.test"), "example.test", now() + 600, alice());
    assert!(shared.starts_with("__Secure-_portcullis="), "{shared}");
    let status = |host: &'static str, cookie: String| {
        let addr = p.addr();
        async move {
            get(
                addr,
                host,
                "/x",
                &[("cookie", &cookie), ("accept", "application/json")],
            )
            .await
            .status
            .as_u16()
        }
    };
    assert_eq!(status("a.example.test", shared.clone()).await, 200);
    assert_eq!(status("b.example.test", shared.clone()).await, 200);
    // A session sealed for one host does not open under the domain's scope, nor does one
    // named as a host-only (`__Host-`) session.
    let one_host = cookie_in(Some("example.test"), "a.example.test", now() + 600, alice());
    assert_eq!(status("a.example.test", one_host).await, 401);
    let host_only = cookie_in(None, "example.test", now() + 600, alice());
    assert_eq!(status("a.example.test", host_only).await, 401);
    // A sign-out on one host ends the session on all of them.
    let shared = cookie_in(Some("example.test"), "example.test", now() + 600, alice());
    let r = get(
        p.addr(),
        "b.example.test",
        "/.portcullis/sign_out",
        &[("cookie", &shared)],
    )
    .await;
    assert_eq!(r.status, 302);
    let cleared = r.headers.get_all("set-cookie").iter().any(|v| {
        let v = v.to_str().unwrap();
        v.starts_with("__Secure-_portcullis=;")
            && v.contains("Max-Age=0")
            && v.contains("Domain=example.test")
    });
    assert!(cleared, "{:?}", r.headers);
    assert_eq!(status("a.example.test", shared).await, 401);
}

#[tokio::test]
async fn an_unverified_email_is_never_passed_on_as_identity() {
    let echo = Echo::start("a").await;
    // Admitted by group, so the policy never needs the email; the IdP says it is unverified
    // (anyone can type any address at some IdPs).
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\n\
         jwt_claims_headers:\n  X-Forwarded-User: email\n  X-Who: sub\n\
         routes:\n  - from: http://app.test\n    to: {}\n    pass_identity_headers: true\n    allowed_groups: [staff]\n",
        echo.url()
    ))
    .await;
    let unverified = Identity {
        email: Some("ceo@example.com".into()),
        email_verified: Some(false),
        ..alice()
    };
    let cookie = cookie_with("app.test", now() + 600, unverified);
    let r = get(p.addr(), "app.test", "/x", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = r.seen();
    assert_eq!(s.header("x-forwarded-user"), None);
    assert_eq!(s.header("x-portcullis-claim-email"), None);
    assert_eq!(s.all("x-who"), vec!["u-alice"]);
    let jwt = s.header("x-portcullis-jwt-assertion").unwrap();
    let payload = jwt_payload(jwt);
    assert_eq!(payload["sub"], "u-alice");
    assert!(payload.get("email").is_none(), "{payload}");
    // Who-am-I says what the IdP sent, and that it is not verified.
    let me = get(
        p.addr(),
        "app.test",
        "/.portcullis/",
        &[("cookie", &cookie), ("accept", "application/json")],
    )
    .await;
    let me: serde_json::Value = serde_json::from_slice(&me.body).unwrap();
    assert_eq!(me["email"], "ceo@example.com");
    assert_eq!(me["email_verified"], false);
    let page = get(
        p.addr(),
        "app.test",
        "/.portcullis/",
        &[("cookie", &cookie)],
    )
    .await;
    assert!(
        page.text().contains("ceo@example.com (unverified email"),
        "{}",
        page.text()
    );

    // The control: the same user with the email verified (or not said either way) has it sent.
    for verified in [Some(true), None] {
        let id = Identity {
            email_verified: verified,
            ..alice()
        };
        let cookie = cookie_with("app.test", now() + 600, id);
        let s = get(p.addr(), "app.test", "/x", &[("cookie", &cookie)])
            .await
            .seen();
        assert_eq!(s.all("x-forwarded-user"), vec!["alice@example.com"]);
        assert_eq!(s.all("x-portcullis-claim-email"), vec!["alice@example.com"]);
        let payload = jwt_payload(s.header("x-portcullis-jwt-assertion").unwrap());
        assert_eq!(payload["email"], "alice@example.com");
    }
}

#[tokio::test]
async fn a_route_that_removes_or_sets_cookie_owns_it_also_beside_the_session() {
    let echo = Echo::start("a").await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\nroutes:\n\
         \x20 - from: http://rm.test\n    to: {e}\n    remove_request_headers: [Cookie]\n    allowed_groups: [staff]\n\
         \x20 - from: http://set.test\n    to: {e}\n    set_request_headers: {{Cookie: role=fixed; tier=gold}}\n    allowed_groups: [staff]\n\
         \x20 - from: http://other.test\n    to: {e}\n    allowed_groups: [staff]\n\
         \x20 - from: http://grant.test\n    to: {e}\n    allowed_groups: [staff]\n    grants:\n      - set_request_headers: {{Cookie: gw_role=reader}}\n",
        e = echo.url()
    ))
    .await;
    // Another route keeps the client's cookies but for the names set.test sets: a client
    // cannot pass itself off there as what set.test says.
    let session = cookie_for("other.test", now() + 600);
    // Also under the spellings PHP reads as the same name (`t%69er`), and a name a grant sets.
    let cookie = format!("a=1; role=admin; {session}; tier =gold; t%69er=gold; gw_role=admin");
    let r = get(
        p.addr(),
        "other.test",
        "/x",
        &[("cookie", &cookie), ("cookie", "b=2")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.seen().all("cookie"), vec!["a=1; b=2"]);
    for host in ["rm.test", "set.test"] {
        let session = cookie_for(host, now() + 600);
        let cookie = format!("a=1; role=admin; {session}");
        let r = get(
            p.addr(),
            host,
            "/x",
            &[("cookie", &cookie), ("cookie", "b=2")],
        )
        .await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        let want: Vec<&str> = if host == "rm.test" {
            vec![]
        } else {
            vec!["role=fixed; tier=gold"]
        };
        assert_eq!(r.seen().all("cookie"), want, "{host}");
    }
}

#[tokio::test]
async fn an_upstream_cannot_set_or_clear_portcullis_cookies() {
    let echo = Echo::start("a").await;
    let p = proxy(&echo).await;
    let cookie = cookie_for("app.test", now() + 600);
    // The echo upstream answers `/set-cookie?…` with each `v` as a Set-Cookie header.
    let r = get(
        p.addr(),
        "app.test",
        "/set-cookie?v=theme%3Ddark&v=__Host-_portcullis%3Dforged%3B%20Path%3D%2F&v=_portcullis%3Dx&v=__Host-_portcullis_csrf_AAAAAAAAAAAAAAAAAAAAAA%3Dy&v=__Secure-_portcullis_signout%3D%3B%20Max-Age%3D0&v=_portcullis_1%3Dz&v=%3D__Host-_portcullis%3Devil&v=%20%3D__Host-_portcullis_csrf_AAAAAAAAAAAAAAAAAAAAAA%3Dy&v=%3Dtheme2",
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let set: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    // Nameless cookies (`=name=value`) are judged by their value, which some browsers send
    // back as `name=value`: only Portcullis's go.
    assert_eq!(set, ["theme=dark", "=theme2"]);
}

#[tokio::test]
async fn pages_that_show_who_is_signed_in_escape_what_the_idp_sent() {
    let echo = Echo::start("a").await;
    let p = proxy(&echo).await;
    // All of it could come from an IdP where users choose their own name, address and groups
    // (the email passes the address check: one `@`, no spaces).
    let hostile = Identity {
        email: Some("<script>alert(1)</script>@evil.test".into()),
        groups: vec!["</p><img/src=x/onerror=alert(2)>".into()],
        claims: [(
            "name".to_string(),
            portcullis::policy::ClaimValue::Str("\"><svg/onload=alert(3)>".into()),
        )]
        .into(),
        ..alice()
    };
    let cookie = cookie_with("app.test", now() + 600, hostile);
    // The 403 page names the user (the domain is not example.com); who-am-I shows all of it.
    let denied = get(
        p.addr(),
        "app.test",
        "/x",
        &[("cookie", &cookie), ("accept", "text/html")],
    )
    .await;
    assert_eq!(denied.status, 403);
    let me = get(
        p.addr(),
        "app.test",
        "/.portcullis/",
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(me.status, 200);
    for (page, shows) in [
        (
            denied.text(),
            vec!["&lt;script&gt;alert(1)&lt;/script&gt;@evil.test"],
        ),
        (
            me.text(),
            vec![
                "&lt;script&gt;alert(1)&lt;/script&gt;@evil.test",
                "&lt;/p&gt;&lt;img/src=x/onerror=alert(2)&gt;",
                "&quot;&gt;&lt;svg/onload=alert(3)&gt;",
            ],
        ),
    ] {
        for s in shows {
            assert!(page.contains(s), "{s} not shown escaped: {page}");
        }
        for raw in ["<script>", "<img", "<svg"] {
            assert!(!page.contains(raw), "{raw} unescaped: {page}");
        }
    }
    for r in [&denied, &me] {
        assert_eq!(r.headers["x-content-type-options"], "nosniff");
        assert_eq!(r.headers["referrer-policy"], "no-referrer");
        assert!(r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }
}

/// The claims of a JWT (its signature is checked elsewhere).
pub(crate) fn jwt_payload(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let part = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

pub(crate) async fn close_reason(ws: &mut Ws, within: Duration) -> Option<(u16, String)> {
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

#[tokio::test]
async fn only_a_sign_out_the_user_asked_for_is_acted_on() {
    let echo = Echo::start("a").await;
    let p = proxy(&echo).await;
    let mine = cookie_for("app.test", now() + 600);
    let still_in = || async {
        get(p.addr(), "app.test", "/x", &[("cookie", &mine)])
            .await
            .status
    };
    let sign_out = |method: &'static str, headers: Vec<(&'static str, String)>| {
        let mine = mine.clone();
        let addr = p.addr();
        async move {
            let mut b = http::Request::builder()
                .method(method)
                .uri("/.portcullis/sign_out")
                .header("host", "app.test")
                .header("cookie", mine);
            for (k, v) in headers {
                b = b.header(k, v);
            }
            send(
                addr,
                b.body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await
        }
    };
    // Another site's link, image or form: a page with a sign-out button, and nothing done.
    let refused: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("GET", vec![("sec-fetch-site", "cross-site".into())]),
        ("GET", vec![("sec-fetch-site", "same-site".into())]),
        ("POST", vec![("sec-fetch-site", "cross-site".into())]),
        ("POST", vec![("origin", "https://evil.test".into())]),
        ("POST", vec![("origin", "null".into())]),
        ("POST", vec![("origin", "http://app.test.evil.test".into())]),
    ];
    for (method, headers) in refused {
        let what = format!("{method} {headers:?}");
        let r = sign_out(method, headers).await;
        assert_eq!(r.status, 200, "{what}");
        assert!(r.headers.get("set-cookie").is_none(), "{what}");
        let page = r.text();
        assert!(
            page.contains(r#"<form method="post" action="/.portcullis/sign_out">"#),
            "{what}: {page}"
        );
        assert_eq!(still_in().await, 200, "{what} signed the user out");
    }
    // The user's own: typed or bookmarked (`none`), a browser that sends no Sec-Fetch-Site, or
    // the sign-out button on one of this host's pages (a same-origin POST).
    // (A browser sends `Origin: null` for a form on a page with `Referrer-Policy: no-referrer`,
    // as Portcullis's pages have.)
    let r = sign_out(
        "POST",
        vec![
            ("sec-fetch-site", "same-origin".into()),
            ("origin", "null".into()),
        ],
    )
    .await;
    // A POST's answer is a page that moves on by itself (a redirect answering the form would
    // be stopped by the page's `form-action 'self'` once it leads to the IdP).
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains(
            r#"http-equiv="refresh" content="0; url=http://app.test/.portcullis/signed_out""#
        ),
        "{}",
        r.text()
    );
    assert!(r.headers.get("set-cookie").is_some());
    assert_eq!(still_in().await, 401);
    for (method, headers) in [
        ("GET", vec![("sec-fetch-site", "none".to_string())]),
        ("GET", vec![]),
        ("POST", vec![("origin", "http://app.test".to_string())]),
        ("POST", vec![]),
    ] {
        let r = sign_out(method, headers.clone()).await;
        let expect = if method == "GET" { 302 } else { 200 };
        assert_eq!(r.status, expect, "{method} {headers:?}");
        assert!(
            r.headers.get("set-cookie").is_some(),
            "{method} {headers:?}"
        );
    }
    // Other methods are not served there, and no other endpoint takes a POST.
    assert_eq!(sign_out("PUT", vec![]).await.status, 405);
    for path in [
        "/.portcullis/",
        "/.portcullis/callback",
        "/.portcullis/sign_in",
        "/.portcullis/signed_out",
    ] {
        let r = send(
            p.addr(),
            http::Request::post(path)
                .header("host", "app.test")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 405, "POST {path}");
    }
}

#[tokio::test]
async fn metrics_count_requests_decisions_websockets_and_reloads() {
    let echo = Echo::start("a").await;
    let yaml = format!(
        "address: 127.0.0.1:0\nmetrics_address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\n\
         routes:\n  - from: http://app.test\n    to: {}\n    allow_websockets: true\n    allowed_domains: [example.com]\n\
         \x20 - from: http://down.test\n    to: http://127.0.0.1:1\n    allow_public_unauthenticated_access: true\n",
        echo.url()
    );
    let p = Proxy::start(&yaml).await;
    let admin = p.handle.admin_addr.unwrap();
    let scrape = || async move { get(admin, "localhost", "/metrics", &[]).await.text() };
    let cookie = cookie_for("app.test", now() + 600);
    assert_eq!(
        get(p.addr(), "app.test", "/a", &[("cookie", &cookie)])
            .await
            .status,
        200
    );
    assert_eq!(
        get(p.addr(), "app.test", "/b", &[("cookie", &cookie)])
            .await
            .status,
        200
    );
    assert_eq!(get(p.addr(), "app.test", "/c", &[]).await.status, 401);
    assert_eq!(get(p.addr(), "down.test", "/", &[]).await.status, 502);
    let mut ws = ws_connect(
        p.addr(),
        "app.test",
        "/ws",
        &[("origin", "http://app.test"), ("cookie", &cookie)],
    )
    .await
    .expect("upgrade");
    assert_eq!(ws_roundtrip(&mut ws, "x").await.as_deref(), Some("x"));
    let m = scrape().await;
    assert_eq!(
        metric(
            &m,
            "portcullis_requests_total{route=\"http://app.test\",method=\"GET\",status=\"2xx\"}"
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_requests_total{route=\"http://app.test\",method=\"GET\",status=\"4xx\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "portcullis_policy_decisions_total{decision=\"unauthenticated\"}"
        ),
        Some(1.0)
    );
    assert!(metric(&m, "portcullis_policy_decisions_total{decision=\"allow\"}").unwrap() >= 3.0);
    assert_eq!(
        metric(&m, "portcullis_upstream_errors_total{kind=\"unavailable\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&m, "portcullis_websockets_open "), Some(1.0));
    assert!(
        !m.contains("/a\"") && !m.contains("/ws"),
        "raw paths became labels"
    );
    drop(ws);
    until_metric(&p, "portcullis_websockets_open", 0.0).await;
    assert_eq!(
        metric(&scrape().await, "portcullis_websockets_open"),
        Some(0.0)
    );
    // A refused reload is counted; a good one too.
    std::fs::write(&p.config, "routes: [oops\n").unwrap();
    assert!(!portcullis::server::reload::reload(&p.handle, &p.config));
    std::fs::write(&p.config, &yaml).unwrap();
    assert!(portcullis::server::reload::reload(&p.handle, &p.config));
    let m = scrape().await;
    assert_eq!(
        metric(&m, "portcullis_config_reload_failures_total "),
        Some(1.0)
    );
    assert_eq!(metric(&m, "portcullis_config_reloads_total "), Some(1.0));
    assert_eq!(
        get(p.addr(), "app.test", "/d", &[("cookie", &cookie)])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_reload_closes_the_websockets_it_no_longer_allows_and_keeps_the_others() {
    let echo = Echo::start("a").await;
    let yaml = |domain: &str, public: &str| {
        format!(
            "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\n\
             routes:\n  - from: http://app.test\n    to: {e}\n    allow_websockets: true\n    allowed_domains: [{domain}]\n\
             \x20 - from: http://pub.test\n    to: {e}\n    allow_websockets: true\n    {public}\n",
            e = echo.url()
        )
    };
    let p = Proxy::start(&yaml(
        "example.com",
        "allow_public_unauthenticated_access: true",
    ))
    .await;
    let cookie = cookie_for("app.test", now() + 600);
    let mut ws = ws_connect(
        p.addr(),
        "app.test",
        "/ws",
        &[("origin", "http://app.test"), ("cookie", &cookie)],
    )
    .await
    .expect("upgrade");
    let mut anon = ws_connect(
        p.addr(),
        "pub.test",
        "/ws",
        &[("origin", "http://pub.test")],
    )
    .await
    .expect("upgrade");
    // A reload that still allows both: both stay open.
    std::fs::write(
        &p.config,
        yaml("example.com", "allow_public_unauthenticated_access: true"),
    )
    .unwrap();
    assert!(portcullis::server::reload::reload(&p.handle, &p.config));
    assert_eq!(ws_roundtrip(&mut ws, "1").await.as_deref(), Some("1"));
    assert_eq!(ws_roundtrip(&mut anon, "1").await.as_deref(), Some("1"));
    // The user's domain is no longer allowed, and the public route now needs a sign-in.
    std::fs::write(
        &p.config,
        yaml("other.test", "allow_any_authenticated_user: true"),
    )
    .unwrap();
    assert!(portcullis::server::reload::reload(&p.handle, &p.config));
    for s in [&mut ws, &mut anon] {
        let (code, reason) = close_reason(s, Duration::from_secs(3))
            .await
            .expect("not closed after the reload");
        assert_eq!(code, 1008);
        assert!(reason.contains("revoked"), "{reason}");
    }
}

#[tokio::test]
async fn no_credential_but_the_session_cookie_authenticates_and_no_request_is_exempt_by_its_look() {
    let echo = Echo::start("a").await;
    let p = proxy(&echo).await;
    let cookie = cookie_for("app.test", now() + 600);
    let r = get(p.addr(), "app.test", "/x", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200);
    let assertion = r
        .seen()
        .header("x-portcullis-jwt-assertion")
        .unwrap()
        .to_string();
    // The session cookie's value itself, outside the Cookie header.
    let value = cookie.split_once('=').unwrap().1.to_string();
    let hits = echo.hits();
    let bearer = format!("Bearer {assertion}");
    let bearer_cookie = format!("Bearer {value}");
    assert!(cookie.starts_with("__Host-_portcullis="), "{cookie}");
    let unprefixed = format!("_portcullis={value}");
    let secure_prefixed = format!("__Secure-_portcullis={value}");
    let attempts: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/x".into(), vec![("authorization", bearer.as_str())]),
        (
            "/x".into(),
            vec![("x-portcullis-jwt-assertion", assertion.as_str())],
        ),
        ("/x".into(), vec![("authorization", bearer_cookie.as_str())]),
        (
            "/x".into(),
            vec![(
                "authorization",
                "Basic YWxpY2VAZXhhbXBsZS5jb206cGFzc3dvcmQ=",
            )],
        ),
        (format!("/x?access_token={assertion}"), vec![]),
        (format!("/x?id_token={assertion}"), vec![]),
        (format!("/x?_portcullis={value}"), vec![]),
        ("/x".into(), vec![("cookie", "_portcullis=")]),
        // The session under a name without its `__Host-` prefix (a sibling host can set
        // that one with `Domain=`), or with the other prefix.
        ("/x".into(), vec![("cookie", unprefixed.as_str())]),
        ("/x".into(), vec![("cookie", secure_prefixed.as_str())]),
        ("/x".into(), vec![("cookie", "_Portcullis=x")]),
        // Health checkers and well-known paths get no exemption on a protected route.
        ("/healthz".into(), vec![("user-agent", "kube-probe/1.31")]),
        ("/".into(), vec![("user-agent", "GoogleHC/1.0")]),
        ("/".into(), vec![("user-agent", "ELB-HealthChecker/2.0")]),
        ("/.well-known/openid-configuration".into(), vec![]),
        ("/.well-known/acme-challenge/token".into(), vec![]),
        ("/.well-known/security.txt".into(), vec![]),
        ("/favicon.ico".into(), vec![]),
        ("/robots.txt".into(), vec![]),
    ];
    for (path, headers) in &attempts {
        let mut h = headers.clone();
        h.push(("accept", "application/json"));
        let r = get(p.addr(), "app.test", path, &h).await;
        assert_eq!(r.status, 401, "{path} {headers:?} got {}", r.status);
    }
    assert_eq!(
        echo.hits(),
        hits,
        "a request without a session reached the upstream"
    );
    // The cookie of another route host is no session here.
    let other = cookie_for("other.test", now() + 600);
    let r = get(
        p.addr(),
        "app.test",
        "/x",
        &[("cookie", &other), ("accept", "application/json")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(echo.hits(), hits);
}

#[tokio::test]
async fn a_neighbouring_cookie_with_utf8_bytes_neither_hides_the_session_nor_lets_it_through() {
    // Browsers send cookie values as they were set, UTF-8 included; such a Cookie header is
    // not ASCII text, and must still be read and stripped byte by byte.
    let echo = Echo::start("a").await;
    let p = proxy(&echo).await;
    let cookie = cookie_for("app.test", now() + 600);
    let value = format!("prefs=café; {cookie}; lang=en");
    let send_with = |cookies: Vec<Vec<u8>>| {
        let mut b = http::Request::get("/x").header("host", "app.test");
        for c in cookies {
            b = b.header("cookie", http::HeaderValue::from_bytes(&c).unwrap());
        }
        send(
            p.addr(),
            b.body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
    };
    let r = send_with(vec![value.clone().into_bytes()]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = r.seen();
    assert_eq!(s.all("cookie"), vec!["prefs=café; lang=en"]);
    assert_eq!(s.all("x-forwarded-user"), vec!["https://idp.test#u-alice"]);
    // The session in a second Cookie header, beside one that is not ASCII: read, and stripped
    // from both.
    let r = send_with(vec![
        b"prefs=caf\xc3\xa9; x=1".to_vec(),
        [format!("{cookie}; ").as_bytes(), b"\xff=\xfe"].concat(),
    ])
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let all = r.seen().all("cookie").join(" | ");
    assert!(!all.contains("_portcullis"), "{all}");
    assert!(all.contains("prefs=café; x=1"), "{all}");
}

#[tokio::test]
async fn a_shadow_policy_is_decided_beside_the_real_one_counted_and_never_enforced() {
    let echo = Echo::start("a").await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\nroutes:\n\
         \x20 - from: http://app.test\n    to: {e}\n    allowed_domains: [example.com]\n\
         \x20   shadow_policy:\n      - allow:\n          or:\n            - groups: {{ has: admins }}\n",
        e = echo.url()
    ))
    .await;
    let staff = cookie_for("app.test", now() + 600);
    let admin = cookie_with(
        "app.test",
        now() + 600,
        Identity {
            groups: vec!["admins".into()],
            ..alice()
        },
    );
    // alice: allowed now, the shadow would refuse her; still let through, twice.
    for _ in 0..2 {
        let r = get(p.addr(), "app.test", "/x", &[("cookie", &staff)]).await;
        assert_eq!(r.status, 200);
    }
    // An admin: both allow; an anonymous request: both ask for a sign-in.
    assert_eq!(
        get(p.addr(), "app.test", "/x", &[("cookie", &admin)])
            .await
            .status,
        200
    );
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
    let m = p.handle.shared.metrics.render();
    let line = "portcullis_shadow_policy_disagreements_total{route=\"http://app.test\",enforced=\"allow\",shadow=\"deny\"}";
    assert_eq!(metric(&m, line), Some(2.0), "{m}");
    assert_eq!(
        m.lines()
            .filter(|l| l.starts_with("portcullis_shadow_policy_disagreements_total"))
            .count(),
        1,
        "{m}"
    );
}

/// What `check` decides for a request is what the running proxy does with it: every request
/// the policies name (the probes `explain --diff` uses), sent to the real server with a session
/// for its user.
#[tokio::test]
async fn check_decides_every_request_as_the_running_proxy_does() {
    let echo = Echo::start("a").await;
    let yaml = format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\nroutes:\n\
         \x20 - from: http://app.test\n    prefix: /public\n    to: {e}\n    allow_public_unauthenticated_access: true\n\
         \x20 - from: http://app.test\n    to: {e}\n    policy:\n\
         \x20     - allow:\n          or:\n            - domain: {{ is: example.com }}\n            - groups: {{ has: admins }}\n            - claim/department: {{ is: eng }}\n\
         \x20       deny:\n          and:\n            - http_path: {{ starts_with: /admin }}\n            - not: [ {{ groups: {{ has: admins }} }} ]\n\
         \x20     - allow:\n          and:\n            - email: {{ is: bob@other.test }}\n            - http_method: {{ is: GET }}\n\
         \x20 - from: http://any.test\n    to: {e}\n    allow_any_authenticated_user: true\n",
        e = echo.url()
    );
    let p = Proxy::start(&yaml).await;
    let compiled = portcullis::config::load_str(
        &yaml,
        "t.yaml",
        std::path::Path::new("."),
        &MapEnv::default(),
    )
    .unwrap();
    let routes = portcullis::explain::RouteTable::new(compiled.routes);
    let probes = portcullis::explain::probes(&routes);
    assert!(probes.len() > 30, "{} probes", probes.len());
    for mut r in probes {
        // The proxy sees the test client's address.
        r.ip = Some("127.0.0.1".parse().unwrap());
        let want = portcullis::explain::decide(&routes, &r).answer;
        let mut b = http::Request::builder()
            .method(r.method.clone())
            .uri(r.path.as_str())
            .header("host", r.host.as_str())
            .header("accept", "application/json");
        if let Some(id) = &r.identity {
            b = b.header("cookie", cookie_with(&r.host, now() + 600, (**id).clone()));
        }
        let got = send(
            p.addr(),
            b.body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
        let answer = match got.status.as_u16() {
            200 => portcullis::explain::Answer::Allow,
            403 | 404 => portcullis::explain::Answer::Deny,
            401 => portcullis::explain::Answer::SignIn,
            s => panic!("{s} for {} {} as {}", r.method, r.url, r.who()),
        };
        assert_eq!(answer, want, "{} {} as {}", r.method, r.url, r.who());
    }
}

/// Opens a WebSocket whose upgrade the upstream answers only after 1.5 s, runs `meanwhile`
/// while it is in flight, and returns what became of the socket: refused (the status), or
/// open and then closed (the close frame), or open and still relaying (`None`).
async fn while_upgrading<F: std::future::Future<Output = ()>>(
    p: &Proxy,
    host: &'static str,
    cookie: &str,
    meanwhile: F,
) -> Result<Option<(u16, String)>, u16> {
    let addr = p.addr();
    let origin = format!("http://{host}");
    let cookie = cookie.to_string();
    let upgrade = tokio::spawn(async move {
        ws_connect(
            addr,
            host,
            "/slow/1500",
            &[("origin", &origin), ("cookie", &cookie)],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    meanwhile.await;
    let mut ws = upgrade.await.unwrap()?;
    if let Some(closed) = close_reason(&mut ws, Duration::from_secs(2)).await {
        return Ok(Some(closed));
    }
    match ws_roundtrip(&mut ws, "still there?").await {
        Some(_) => Ok(None),
        None => Ok(Some((0, "closed without a close frame".into()))),
    }
}

#[tokio::test]
async fn a_sign_out_while_a_websocket_upgrade_is_in_flight_ends_that_socket() {
    let echo = Echo::start("a").await;
    let p = proxy(&echo).await;
    let cookie = cookie_for("app.test", now() + 600);
    // Control: with no sign-out, the slow upgrade opens and relays.
    let mut ws = ws_connect(
        p.addr(),
        "app.test",
        "/slow/1500",
        &[("origin", "http://app.test"), ("cookie", &cookie)],
    )
    .await
    .expect("upgrade");
    assert_eq!(ws_roundtrip(&mut ws, "hi").await.as_deref(), Some("hi"));
    let addr = p.addr();
    let got = while_upgrading(&p, "app.test", &cookie, async {
        let r = get(
            addr,
            "app.test",
            "/.portcullis/sign_out",
            &[("cookie", &cookie)],
        )
        .await;
        assert_eq!(r.status, 302);
    })
    .await;
    match got {
        Err(status) => assert_eq!(status, 401),
        Ok(Some((code, reason))) => {
            assert_eq!(code, 1008);
            assert!(reason.contains("signed out"), "{reason}");
        }
        Ok(None) => panic!("a socket upgraded during its session's sign-out stayed open"),
    }
    // The other socket of the same session was closed at the sign-out too.
    assert!(close_reason(&mut ws, Duration::from_secs(2))
        .await
        .is_some());
}

#[tokio::test]
async fn a_reload_while_a_websocket_upgrade_is_in_flight_decides_that_socket_too() {
    let echo = Echo::start("a").await;
    let yaml = |domain: &str| {
        format!(
            "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\n\
             routes:\n  - from: http://app.test\n    to: {e}\n    allow_websockets: true\n    allowed_domains: [{domain}]\n",
            e = echo.url()
        )
    };
    let p = Proxy::start(&yaml("example.com")).await;
    let cookie = cookie_for("app.test", now() + 600);
    let got = while_upgrading(&p, "app.test", &cookie, async {
        std::fs::write(&p.config, yaml("other.test")).unwrap();
        assert!(portcullis::server::reload::reload(&p.handle, &p.config));
    })
    .await;
    match got {
        Err(status) => assert_eq!(status, 403),
        Ok(Some((code, reason))) => {
            assert_eq!(code, 1008);
            assert!(reason.contains("revoked"), "{reason}");
        }
        Ok(None) => panic!("a socket upgraded across a reload that refuses it stayed open"),
    }
}

#[tokio::test]
async fn a_second_session_cookie_planted_under_the_cookie_domain_is_no_session() {
    let echo = Echo::start("a").await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\ncookie_domain: example.test\n\
         idp_provider_url: http://127.0.0.1:9\nidp_client_id: c\nidp_client_secret: s\nroutes:\n\
         \x20 - from: http://a.example.test\n    to: {}\n    pass_identity_headers: true\n    allow_any_authenticated_user: true\n",
        echo.url()
    ))
    .await;
    let mallory = Identity {
        sub: "u-mallory".into(),
        email: Some("mallory@example.com".into()),
        ..alice()
    };
    // A sibling host (www.example.test) planted mallory's session with `Domain=example.test;
    // Path=/x`: the browser sends it first, beside alice's own.
    let planted = cookie_in(Some("example.test"), "example.test", now() + 600, mallory);
    let own = cookie_in(Some("example.test"), "example.test", now() + 600, alice());
    let req = |cookie: String, accept: &'static str| {
        let addr = p.addr();
        async move {
            get(
                addr,
                "a.example.test",
                "/x",
                &[("cookie", &cookie), ("accept", accept)],
            )
            .await
        }
    };
    // The control: each alone opens, and the same cookie sent twice is still one session.
    let r = req(own.clone(), "application/json").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.seen().all("x-portcullis-claim-email"),
        vec!["alice@example.com"]
    );
    assert_eq!(req(planted.clone(), "application/json").await.status, 200);
    assert_eq!(
        req(format!("{own}; {own}"), "application/json")
            .await
            .status,
        200
    );
    let hits = echo.hits();
    for both in [format!("{planted}; {own}"), format!("{own}; {planted}")] {
        assert_eq!(req(both.clone(), "application/json").await.status, 401);
        // A browser is told why, rather than sent round a sign-in that changes nothing.
        let page = req(both, "text/html").await;
        assert_eq!(page.status, 400);
        assert!(
            page.text().contains("two different session cookies"),
            "{}",
            page.text()
        );
    }
    assert_eq!(
        echo.hits(),
        hits,
        "a request with two sessions reached the upstream"
    );
}
