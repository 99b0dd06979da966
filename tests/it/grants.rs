//! Who may do what, and where: `grants` (request headers the policy language sets) and `to`
//! entries chosen by who signed in, through the real server with sessions sealed as a sign-in
//! seals them.

use crate::sessions::{alice, close_reason, cookie_with, jwt_payload, SECRET};
use crate::support::*;
use portcullis::clock::now;
use portcullis::policy::Identity;
use std::time::Duration;

fn user(sub: &str, email: &str, groups: &[&str]) -> Identity {
    Identity {
        sub: sub.into(),
        email: Some(email.into()),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..alice()
    }
}

/// Team A's gateway listens on 127.0.0.1, team B's on 127.0.0.2 (so their hosts, the
/// assertion's audience, differ).
async fn gateways() -> (Echo, Echo) {
    let a = Echo::start("gateway-a").await;
    let l = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2");
    let b = Echo::serve(l, "gateway-b", None).await;
    (a, b)
}

fn config(a: &Echo, b: &Echo, admins: &str) -> String {
    format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\nroutes:\n\
         \x20 - from: http://claw.test\n\
         \x20   to:\n\
         \x20     - when: {{ groups: {{ has: team-a }} }}\n\
         \x20       to: {a}\n\
         \x20     - when: {{ or: [ {{ groups: {{ has: team-b }} }}, {{ email: {{ is: bob@example.com }} }} ] }}\n\
         \x20       to: [{b}]\n\
         \x20   allow_websockets: true\n\
         \x20   allow_any_authenticated_user: true\n\
         \x20   grants:\n\
         \x20     - when: {{ groups: {{ has: {admins} }} }}\n\
         \x20       set_request_headers: {{ X-OpenClaw-Scopes: operator.admin }}\n\
         \x20     - set_request_headers: {{ X-OpenClaw-Scopes: operator.read }}\n",
        a = a.url(),
        b = b.url(),
    )
}

#[tokio::test]
async fn each_user_reaches_the_gateway_and_the_scopes_the_config_gives_them_and_no_client_adds_any()
{
    let (a, b) = gateways().await;
    let p = Proxy::start(&config(&a, &b, "openclaw-admins")).await;
    let alice = cookie_with(
        "claw.test",
        now() + 600,
        user(
            "u-alice",
            "alice@example.com",
            &["team-a", "openclaw-admins"],
        ),
    );
    let bob = cookie_with(
        "claw.test",
        now() + 600,
        user("u-bob", "bob@example.com", &["staff"]),
    );
    let carol = cookie_with(
        "claw.test",
        now() + 600,
        user("u-carol", "carol@example.com", &["staff"]),
    );
    // Every spelling of the scope header a client might send, and a second copy.
    let spoof: &[(&str, &str)] = &[
        ("x-openclaw-scopes", "operator.admin"),
        ("x_openclaw_scopes", "operator.admin"),
        ("X.OpenClaw.Scopes", "operator.admin"),
    ];
    let ask = |cookie: String| {
        let addr = p.addr();
        async move {
            let mut h: Vec<(&str, &str)> =
                vec![("cookie", &cookie), ("accept", "application/json")];
            h.extend_from_slice(spoof);
            get(addr, "claw.test", "/x", &h).await
        }
    };

    let r = ask(alice).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-echo-name"], "gateway-a");
    let s = r.seen();
    assert_eq!(s.all("x-openclaw-scopes"), vec!["operator.admin"]);
    assert_eq!(s.header("x_openclaw_scopes"), None);
    assert_eq!(s.header("x.openclaw.scopes"), None);
    let aud = jwt_payload(s.header("x-portcullis-jwt-assertion").unwrap())["aud"].clone();
    assert_eq!(aud, "127.0.0.1");

    // bob is in no team, but his email is named by team B's entry: gateway B, read only, and
    // his client's claim to be an admin never arrives.
    let r = ask(bob).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["x-echo-name"], "gateway-b");
    let s = r.seen();
    assert_eq!(s.all("x-openclaw-scopes"), vec!["operator.read"]);
    let aud = jwt_payload(s.header("x-portcullis-jwt-assertion").unwrap())["aud"].clone();
    assert_eq!(aud, "127.0.0.2");

    // carol may pass, but no entry picks her: a 403 that says so, and no gateway hears of it.
    let (ha, hb) = (a.hits(), b.hits());
    let r = ask(carol.clone()).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("no_upstream"), "{}", r.text());
    let page = get(
        p.addr(),
        "claw.test",
        "/x",
        &[("cookie", &carol), ("accept", "text/html")],
    )
    .await;
    assert_eq!(page.status, 403);
    assert!(
        page.text().contains("no gateway is assigned"),
        "{}",
        page.text()
    );
    assert!(page.text().contains("carol@example.com"));
    assert_eq!((a.hits(), b.hits()), (ha, hb));

    // Anonymous: asked to sign in (401 for an API client), never sent anywhere.
    let r = get(
        p.addr(),
        "claw.test",
        "/x",
        &[
            ("accept", "application/json"),
            ("x-openclaw-scopes", "operator.admin"),
        ],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!((a.hits(), b.hits()), (ha, hb));
}

#[tokio::test]
async fn a_route_without_grants_strips_the_scope_header_that_another_route_grants() {
    let (a, b) = gateways().await;
    let yaml = format!(
        "{}\x20 - from: http://public.test\n    to: {}\n    allow_public_unauthenticated_access: true\n",
        config(&a, &b, "openclaw-admins"),
        a.url()
    );
    let p = Proxy::start(&yaml).await;
    let r = get(
        p.addr(),
        "public.test",
        "/x",
        &[
            ("x-openclaw-scopes", "operator.admin"),
            ("x_openclaw_scopes", "operator.admin"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let s = r.seen();
    assert_eq!(s.header("x-openclaw-scopes"), None);
    assert_eq!(s.header("x_openclaw_scopes"), None);
}

#[tokio::test]
async fn a_reload_that_changes_a_users_grant_closes_their_websocket_and_keeps_the_others() {
    let (a, b) = gateways().await;
    let p = Proxy::start(&config(&a, &b, "openclaw-admins")).await;
    let admin = cookie_with(
        "claw.test",
        now() + 600,
        user(
            "u-alice",
            "alice@example.com",
            &["team-a", "openclaw-admins"],
        ),
    );
    let reader = cookie_with(
        "claw.test",
        now() + 600,
        user("u-dave", "dave@example.com", &["team-a"]),
    );
    let open = |cookie: String| {
        let addr = p.addr();
        async move {
            ws_connect(
                addr,
                "claw.test",
                "/ws",
                &[("origin", "http://claw.test"), ("cookie", &cookie)],
            )
            .await
            .expect("upgrade")
        }
    };
    let mut admin_ws = open(admin).await;
    let mut reader_ws = open(reader).await;
    // The admins' group is renamed: alice is now granted only what everyone is.
    std::fs::write(&p.config, config(&a, &b, "gateway-admins")).unwrap();
    assert!(portcullis::server::reload::reload(&p.handle, &p.config));
    let (code, reason) = close_reason(&mut admin_ws, Duration::from_secs(3))
        .await
        .expect("the admin's socket stayed open after losing the grant");
    assert_eq!(code, 1008);
    assert!(reason.contains("policy change"), "{reason}");
    assert_eq!(
        ws_roundtrip(&mut reader_ws, "still").await.as_deref(),
        Some("still"),
        "a socket whose grant did not change was closed"
    );
}

#[tokio::test]
async fn a_reload_that_changes_what_the_route_sets_upstream_closes_its_websockets() {
    let echo = Echo::start("a").await;
    let yaml = |v: &str| {
        format!(
            "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\nroutes:\n\
             \x20 - from: http://claw.test\n    to: {}\n    allow_websockets: true\n    allow_any_authenticated_user: true\n\
             \x20   set_request_headers: {{ X-OpenClaw-Scopes: {v} }}\n",
            echo.url()
        )
    };
    let p = Proxy::start(&yaml("operator.admin")).await;
    let cookie = cookie_with("claw.test", now() + 600, alice());
    let mut ws = ws_connect(
        p.addr(),
        "claw.test",
        "/ws",
        &[("origin", "http://claw.test"), ("cookie", &cookie)],
    )
    .await
    .expect("upgrade");
    // The same config again: the socket stays.
    std::fs::write(&p.config, yaml("operator.admin")).unwrap();
    assert!(portcullis::server::reload::reload(&p.handle, &p.config));
    assert_eq!(ws_roundtrip(&mut ws, "1").await.as_deref(), Some("1"));
    // The cap it was opened with is tightened: it reconnects with the new one.
    std::fs::write(&p.config, yaml("operator.read")).unwrap();
    assert!(portcullis::server::reload::reload(&p.handle, &p.config));
    let (code, _) = close_reason(&mut ws, Duration::from_secs(3))
        .await
        .expect("a socket kept the headers of the old config");
    assert_eq!(code, 1008);
}
