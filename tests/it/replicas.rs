//! Several replicas sharing sign-outs through a real `redis-server` (`session_store`): two
//! servers with the same `cookie_secret`, each with its own `data_dir`.

use crate::sessions::{close_reason, cookie_for, SECRET};
use crate::support::redis::Redis;
use crate::support::*;
use portcullis::clock::now;
use std::time::{Duration, Instant};

async fn replica(echo: &Echo, redis: &Redis) -> Proxy {
    Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\nsession_store: {}\n\
         routes:\n  - from: http://app.test\n    to: {}\n    allow_websockets: true\n    allowed_domains: [example.com]\n",
        redis.url(),
        echo.url()
    ))
    .await
}

async fn status(p: &Proxy, cookie: &str) -> u16 {
    get(
        p.addr(),
        "app.test",
        "/x",
        &[("cookie", cookie), ("accept", "application/json")],
    )
    .await
    .status
    .as_u16()
}

/// Waits (at most `within`) until `p` answers `want` for the cookie; returns how long it took.
async fn until_status(p: &Proxy, cookie: &str, want: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = status(p, cookie).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "still {got}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sign_out(p: &Proxy, cookie: &str) {
    let r = get(
        p.addr(),
        "app.test",
        "/.portcullis/sign_out",
        &[("cookie", cookie), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(r.status, 302);
}

#[tokio::test]
async fn a_sign_out_on_one_replica_is_refused_by_the_other_within_a_second_and_closes_its_websocket(
) {
    let echo = Echo::start("a").await;
    let redis = Redis::start();
    let (a, b) = (replica(&echo, &redis).await, replica(&echo, &redis).await);
    until_metric(&a, "portcullis_session_store_up", 1.0).await;
    until_metric(&b, "portcullis_session_store_up", 1.0).await;
    let cookie = cookie_for("app.test", now() + 600);
    let other = cookie_for("app.test", now() + 600);
    assert_eq!(
        (status(&a, &cookie).await, status(&b, &cookie).await),
        (200, 200)
    );
    let mut ws = ws_connect(
        b.addr(),
        "app.test",
        "/ws",
        &[("origin", "http://app.test"), ("cookie", &cookie)],
    )
    .await
    .expect("upgrade on b");
    assert_eq!(ws_roundtrip(&mut ws, "hi").await.as_deref(), Some("hi"));

    sign_out(&a, &cookie).await;
    assert_eq!(
        status(&a, &cookie).await,
        401,
        "refused at once where it signed out"
    );
    let took = until_status(&b, &cookie, 401, Duration::from_secs(1)).await;
    let (code, reason) = close_reason(&mut ws, Duration::from_secs(1))
        .await
        .expect("the other replica kept the signed-out session's WebSocket open");
    assert_eq!(code, 1008);
    assert!(reason.contains("signed out"), "{reason}");
    // Only that session: another one still passes on both.
    assert_eq!(
        (status(&a, &other).await, status(&b, &other).await),
        (200, 200)
    );
    eprintln!("sign-out reached the other replica in {took:?}");
}

#[tokio::test]
async fn with_redis_down_requests_go_on_and_a_sign_out_made_meanwhile_reaches_the_other_replica_after(
) {
    let echo = Echo::start("a").await;
    let mut redis = Redis::start();
    let (a, b) = (replica(&echo, &redis).await, replica(&echo, &redis).await);
    until_metric(&a, "portcullis_session_store_up", 1.0).await;
    until_metric(&b, "portcullis_session_store_up", 1.0).await;
    let before = cookie_for("app.test", now() + 600);
    let during = cookie_for("app.test", now() + 600);
    let kept = cookie_for("app.test", now() + 600);
    // Signed out while Redis is up: both know it.
    sign_out(&a, &before).await;
    until_status(&b, &before, 401, Duration::from_secs(1)).await;

    redis.stop();
    until_metric(&a, "portcullis_session_store_up", 0.0).await;
    until_metric(&b, "portcullis_session_store_up", 0.0).await;
    // The front door stays open: signed-in requests pass, known sign-outs still hold.
    for p in [&a, &b] {
        assert_eq!(status(p, &kept).await, 200);
        assert_eq!(status(p, &before).await, 401);
    }
    // A sign-out during the outage holds where it was made at once...
    sign_out(&b, &during).await;
    assert_eq!(status(&b, &during).await, 401);
    assert_eq!(status(&a, &during).await, 200, "a knew of it without Redis");

    // ...and reaches the other replica once Redis is back (empty: it kept no data).
    redis.resume();
    until_metric(&a, "portcullis_session_store_up", 1.0).await;
    until_metric(&b, "portcullis_session_store_up", 1.0).await;
    until_status(&a, &during, 401, Duration::from_secs(5)).await;
    for p in [&a, &b] {
        assert_eq!(status(p, &kept).await, 200);
        assert_eq!(status(p, &before).await, 401);
    }
    // What Redis lost was written back: a replica started now knows both sign-outs.
    let c = replica(&echo, &redis).await;
    until_metric(&c, "portcullis_session_store_up", 1.0).await;
    until_status(&c, &before, 401, Duration::from_secs(5)).await;
    until_status(&c, &during, 401, Duration::from_secs(5)).await;
    assert_eq!(status(&c, &kept).await, 200);
}

#[test]
fn the_store_url_is_checked_with_its_position_and_its_password_is_never_printed() {
    use portcullis::config::{load_str, MapEnv};
    let route = "routes:\n  - from: http://a\n    to: http://b\n    allow_public_unauthenticated_access: true\n";
    let load = |extra: &str| {
        load_str(
            &format!("insecure_server: true\n{extra}{route}"),
            "config.yaml",
            std::path::Path::new("."),
            &MapEnv::default(),
        )
    };
    let err = load("session_store: http://:pw@cache:6379\n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("config.yaml:2:16: session_store:"), "{err}");
    let ok = load("session_store: redis://:hunter2@cache:6379/1\n").unwrap();
    let shown = format!("{:?}", ok.settings.session_store);
    assert!(
        shown.contains("cache:6379/1") && !shown.contains("hunter2"),
        "{shown}"
    );
    let both = load("session_store: redis://c\nsession_store_file: /x\n")
        .err()
        .unwrap()
        .to_string();
    assert!(
        both.contains("either session_store or session_store_file"),
        "{both}"
    );
}
