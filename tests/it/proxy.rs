//! Proxy core, end to end: the real server on port 0 in front of a Rust echo upstream.

use crate::support::*;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use std::time::Duration;

fn public_route(from: &str, to: &str) -> String {
    format!("  - from: {from}\n    to: {to}\n    allow_public_unauthenticated_access: true\n")
}

async fn proxy_with(routes: &str) -> Proxy {
    Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\nroutes:\n{routes}"
    ))
    .await
}

#[tokio::test]
async fn routes_match_host_then_path_first_match_in_file_order() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let c = Echo::start("c").await;
    let routes = format!(
        "  - from: http://app.test\n    prefix: /api\n    to: {}\n    allow_public_unauthenticated_access: true\n\
         {}{}",
        b.url(),
        public_route("http://app.test", &a.url()),
        public_route("http://other.test", &c.url()),
    );
    let p = proxy_with(&routes).await;
    assert_eq!(
        get(p.addr(), "app.test", "/api/x", &[])
            .await
            .seen()
            .upstream,
        "b"
    );
    assert_eq!(
        get(p.addr(), "app.test", "/web", &[]).await.seen().upstream,
        "a"
    );
    assert_eq!(
        get(p.addr(), "APP.test.", "/web", &[])
            .await
            .seen()
            .upstream,
        "a"
    );
    assert_eq!(
        get(p.addr(), "other.test", "/api/x", &[])
            .await
            .seen()
            .upstream,
        "c"
    );
}

#[tokio::test]
async fn no_matching_route_is_404_and_never_a_default_upstream() {
    let a = Echo::start("a").await;
    let routes = format!("  - from: http://app.test\n    path: /only\n    to: {}\n    allow_public_unauthenticated_access: true\n", a.url());
    let p = proxy_with(&routes).await;
    assert_eq!(get(p.addr(), "app.test", "/other", &[]).await.status, 404);
    assert_eq!(
        get(p.addr(), "unknown.test", "/only", &[]).await.status,
        404
    );
    assert_eq!(get(p.addr(), "app.test", "/only", &[]).await.status, 200);
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn a_protected_route_never_reaches_its_upstream_without_a_decision() {
    let a = Echo::start("a").await;
    let routes = format!(
        "  - from: http://app.test\n    to: {}\n    allow_any_authenticated_user: true\n\
         \x20\x20- from: http://nobody.test\n    to: {}\n",
        a.url(),
        a.url()
    );
    let p = proxy_with(&routes).await;
    let r = get(p.addr(), "app.test", "/", &[("accept", "application/json")]).await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("unauthenticated"));
    // A route with no policy at all lets nobody through.
    assert_eq!(get(p.addr(), "nobody.test", "/", &[]).await.status, 403);
    assert!(
        ws_connect(p.addr(), "app.test", "/", &[("origin", "http://app.test")])
            .await
            .is_err()
    );
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn forwarding_context_is_set_by_the_proxy_and_client_claims_are_dropped() {
    let a = Echo::start("a").await;
    let p = proxy_with(&public_route("http://app.test", &a.url())).await;
    let r = get(
        p.addr(),
        "app.test",
        "/x?y=1",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-prefix", "/evil"),
            ("x-forwarded-user", "admin@corp.test"),
            ("x_forwarded_user", "admin@corp.test"),
            ("x-portcullis-jwt-assertion", "forged"),
            ("x-original-url", "/admin"),
            ("connection", "x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let s = r.seen();
    assert_eq!(s.target, "/x?y=1");
    assert_eq!(s.all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(s.all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(s.all("x-forwarded-host"), vec!["app.test"]);
    for gone in [
        "forwarded",
        "x-real-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-user",
        "x_forwarded_user",
        "x-portcullis-jwt-assertion",
        "x-original-url",
        "x-drop-me",
        "keep-alive",
        "te",
        "upgrade",
    ] {
        assert_eq!(s.header(gone), None, "{gone} reached the upstream");
    }
    assert_eq!(s.header("x-kept"), Some("yes"));
    // Hop-by-hop response headers from the upstream are not relayed either.
    assert!(!r.headers.contains_key("x-upstream-hop"));
    assert!(!r.headers.contains_key("keep-alive"));
    assert_eq!(r.headers["x-echo-name"], "a");
}

#[tokio::test]
async fn the_path_the_route_decides_on_is_the_path_forwarded() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let routes = format!(
        "  - from: http://app.test\n    prefix: /public\n    to: {}\n    allow_public_unauthenticated_access: true\n\
         \x20\x20- from: http://app.test\n    to: {}\n",
        a.url(),
        b.url()
    );
    let p = proxy_with(&routes).await;
    // `/public/../admin` is `/admin`: not the public route, and nobody may pass there.
    assert_eq!(
        get(p.addr(), "app.test", "/public/../admin", &[])
            .await
            .status,
        403
    );
    assert_eq!(
        get(p.addr(), "app.test", "/public/%2e%2e/admin", &[])
            .await
            .status,
        403
    );
    let r = get(p.addr(), "app.test", "/public//a/./b/../c", &[]).await;
    assert_eq!(r.seen().target, "/public/a/c");
    for bad in [
        "/public/a%2fb",
        "/public/a%5Cb",
        "/public/a%00",
        "/public/..;/admin",
        "/public/%c0%ae",
    ] {
        assert_eq!(
            get(p.addr(), "app.test", bad, &[]).await.status,
            400,
            "{bad}"
        );
    }
    let raw_bs = raw(
        p.addr(),
        b"GET /public\\..\\admin HTTP/1.1\r\nHost: app.test\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(raw_bs.starts_with("HTTP/1.1 400"), "{raw_bs}");
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn request_targets_other_than_origin_form_for_this_host_are_refused() {
    let a = Echo::start("a").await;
    let p = proxy_with(&public_route("http://app.test", &a.url())).await;
    let abs_other = raw(
        p.addr(),
        b"GET http://evil.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(abs_other.starts_with("HTTP/1.1 400"), "{abs_other}");
    let abs_same = raw(
        p.addr(),
        b"GET http://app.test/x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(abs_same.starts_with("HTTP/1.1 200"), "{abs_same}");
    let two_hosts = raw(
        p.addr(),
        b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    let star = raw(
        p.addr(),
        b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(star.starts_with("HTTP/1.1 204"), "{star}");
    let connect = raw(
        p.addr(),
        b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 4"), "{connect}");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn prefix_rewrite_preserve_host_and_header_edits_apply() {
    let a = Echo::start("a").await;
    let routes = format!(
        "  - from: http://app.test\n    prefix: /app/\n    prefix_rewrite: /\n    to: {a}\n    allow_public_unauthenticated_access: true\n\
         \x20   set_request_headers:\n      X-Route: app\n    remove_request_headers: [x-secret]\n\
         \x20\x20- from: http://keep.test\n    to: {a}/base/\n    preserve_host_header: true\n    allow_public_unauthenticated_access: true\n",
        a = a.url()
    );
    let p = proxy_with(&routes).await;
    let s = get(
        p.addr(),
        "app.test",
        "/app/x/y?q",
        &[("x-secret", "1"), ("x-route", "client")],
    )
    .await
    .seen();
    assert_eq!(s.target, "/x/y?q");
    assert_eq!(s.all("x-route"), vec!["app"]);
    assert_eq!(s.header("x-secret"), None);
    assert_eq!(s.header("host"), Some(a.addr.to_string().as_str()));
    let s = get(p.addr(), "keep.test", "/z", &[]).await.seen();
    assert_eq!(s.target, "/base/z");
    assert_eq!(s.header("host"), Some("keep.test"));
}

#[tokio::test]
async fn a_down_upstream_is_502_and_a_slow_one_504_and_others_are_unaffected() {
    let a = Echo::start("a").await;
    let (_reserved, dead) = refusing_addr();
    let routes = format!(
        "  - from: http://down.test\n    to: http://{dead}\n    allow_public_unauthenticated_access: true\n\
         \x20\x20- from: http://slow.test\n    to: {a}\n    timeout: 300ms\n    allow_public_unauthenticated_access: true\n\
         {}",
        public_route("http://app.test", &a.url()),
        a = a.url()
    );
    let p = proxy_with(&routes).await;
    let r = get(p.addr(), "down.test", "/", &[]).await;
    assert_eq!(r.status, 502);
    assert!(r.text().contains("not answering"));
    assert_eq!(
        get(p.addr(), "slow.test", "/slow/2000", &[]).await.status,
        504
    );
    assert_eq!(
        get(p.addr(), "slow.test", "/slow/10", &[]).await.status,
        200
    );
    assert_eq!(get(p.addr(), "app.test", "/", &[]).await.status, 200);
}

#[tokio::test]
async fn several_upstreams_are_balanced_and_a_refused_one_fails_over() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let (_reserved, dead) = refusing_addr();
    let routes = format!(
        "  - from: http://app.test\n    to: [{}, {}]\n    allow_public_unauthenticated_access: true\n\
         \x20\x20- from: http://fo.test\n    to: [http://{dead}, {}]\n    allow_public_unauthenticated_access: true\n",
        a.url(),
        b.url(),
        a.url()
    );
    let p = proxy_with(&routes).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(get(p.addr(), "app.test", "/", &[]).await.seen().upstream);
    }
    names.sort();
    assert_eq!(names, vec!["a", "a", "b", "b"]);
    for _ in 0..3 {
        // POST with a body: the body was not read when the refused connection failed.
        let req = Request::post("/upload")
            .header("host", "fo.test")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let r = send(p.addr(), req).await;
        assert_eq!(r.status, 200);
        let s = r.seen();
        assert_eq!((s.upstream.as_str(), s.body_len), ("a", 5));
    }
}

#[tokio::test]
async fn bodies_stream_both_ways_without_being_buffered_whole() {
    use http_body_util::BodyExt;
    let a = Echo::start("a").await;
    let p = proxy_with(&public_route("http://app.test", &a.url())).await;
    // Response: the first chunk arrives while the upstream is still waiting to send the second.
    let mut s = h1_connect(p.addr()).await;
    let req = Request::get("/stream")
        .header("host", "app.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut body = s.send_request(req).await.unwrap().into_body();
    let first = tokio::time::timeout(Duration::from_millis(1000), body.frame())
        .await
        .expect("first chunk was held back")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first;"));
    // Request: a 4 MiB upload passes through intact.
    let big = Bytes::from(vec![b'x'; 4 << 20]);
    let req = Request::post("/up")
        .header("host", "app.test")
        .body(Full::new(big))
        .unwrap();
    assert_eq!(send(p.addr(), req).await.seen().body_len, 4 << 20);
}

#[tokio::test]
async fn websocket_upgrades_are_relayed_only_where_allowed_and_from_the_same_origin() {
    let a = Echo::start("a").await;
    let routes = format!(
        "  - from: http://ws.test\n    to: {a}\n    allow_websockets: true\n    timeout: 500ms\n    allow_public_unauthenticated_access: true\n\
         \x20\x20- from: http://plain.test\n    to: {a}\n    allow_public_unauthenticated_access: true\n",
        a = a.url()
    );
    let p = proxy_with(&routes).await;
    let port = p.port();
    let own = format!("http://ws.test:{port}");
    // Same origin (Host as sent is ws.test without a port here, so the origin has none).
    let mut ws = ws_connect(
        p.addr(),
        "ws.test",
        "/socket",
        &[("origin", "http://ws.test")],
    )
    .await
    .expect("upgrade refused");
    assert_eq!(
        ws_roundtrip(&mut ws, "hello").await.as_deref(),
        Some("hello")
    );
    // Idle longer than the route's timeout: a WebSocket is never cut by it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        ws_roundtrip(&mut ws, "still here").await.as_deref(),
        Some("still here")
    );
    let hits = a.hits();
    assert_eq!(
        ws_connect(
            p.addr(),
            "ws.test",
            "/socket",
            &[("origin", "http://evil.test")]
        )
        .await
        .err(),
        Some(403)
    );
    assert_eq!(
        ws_connect(p.addr(), "ws.test", "/socket", &[("origin", &own)])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        ws_connect(p.addr(), "ws.test", "/socket", &[]).await.err(),
        Some(403)
    );
    assert_eq!(
        ws_connect(
            p.addr(),
            "ws.test",
            "/socket",
            &[("origin", "https://ws.test")]
        )
        .await
        .err(),
        Some(403)
    );
    assert_eq!(
        ws_connect(
            p.addr(),
            "plain.test",
            "/socket",
            &[("origin", "http://plain.test")]
        )
        .await
        .err(),
        Some(403)
    );
    assert_eq!(a.hits(), hits, "a refused upgrade reached the upstream");
    let with_port = format!("ws.test:{port}");
    let mut ws2 = ws_connect(p.addr(), &with_port, "/s", &[("origin", &own)])
        .await
        .expect("origin with port refused");
    assert_eq!(ws_roundtrip(&mut ws2, "x").await.as_deref(), Some("x"));
}

#[tokio::test]
async fn oversized_and_slow_headers_are_cut_off_and_others_keep_being_served() {
    let a = Echo::start("a").await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ntimeout_read_header: 500ms\nroutes:\n{}",
        public_route("http://app.test", &a.url())
    ))
    .await;
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    // A 431, or a close: either within a bound (a server that neither answers nor closes fails).
    let r = raw_until_closed(p.addr(), huge.as_bytes(), Duration::from_secs(3))
        .await
        .expect("an oversized head was neither answered nor closed within 3 s");
    assert!(
        r.starts_with("HTTP/1.1 431") || r.is_empty(),
        "{}",
        &r[..r.len().min(200)]
    );
    // Slowloris: half a request line, then nothing: closed after the header timeout.
    let started = std::time::Instant::now();
    let slow = raw(
        p.addr(),
        b"GET / HTTP/1.1\r\nHost: app",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "slow client held the connection"
    );
    assert!(!slow.contains("200 OK"));
    assert_eq!(get(p.addr(), "app.test", "/", &[]).await.status, 200);
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn each_head_on_a_keep_alive_connection_has_the_whole_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let a = Echo::start("a").await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ntimeout_read_header: 1500ms\nroutes:\n{}",
        public_route("http://app.test", &a.url())
    ))
    .await;
    // Three requests, each sent 900 ms after the answer to the one before: each wait is well
    // within its own head's 1.5 s, though the third comes after the first head's deadline (a
    // timer left as it was would have closed the connection); then half of a fourth, which
    // must be cut off.
    let mut tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    let mut seen = String::new();
    for i in 1..=3 {
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
            .await
            .unwrap();
        // The answer (the echo's JSON body ends with `}`), before the next wait begins.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.matches("HTTP/1.1 200 OK").count() < i || !seen.ends_with('}') {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline.into(), tcp.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no answer to request {i}: {seen}"))
                .unwrap();
            assert!(n > 0, "closed before answering request {i}: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: app").await.unwrap();
    let started = std::time::Instant::now();
    let rest = read_to_close(&mut tcp, Duration::from_secs(6)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a slow fourth head held the connection"
    );
    assert!(!rest.contains("200 OK"), "{rest}");
    assert_eq!(a.hits(), 3);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let a = Echo::start("a").await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ntimeout_idle: 400ms\ntimeout_read_header: 30s\nroutes:\n{}",
        public_route("http://app.test", &a.url())
    ))
    .await;
    let started = std::time::Instant::now();
    let r = raw(
        p.addr(),
        b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "idle connection stayed open"
    );
}

#[tokio::test]
async fn a_keep_alive_connection_in_use_outlives_the_idle_timeout() {
    let a = Echo::start("a").await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ntimeout_idle: 400ms\ntimeout_read_header: 30s\nroutes:\n{}",
        public_route("http://app.test", &a.url())
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    let (mut s, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    // A request every 150 ms for 1.5 s, all on this one connection: never quiet for 400 ms.
    for i in 0..10 {
        let req = http::Request::get("/")
            .header("host", "app.test")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = s.send_request(req).await;
        assert!(resp.is_ok(), "request {i} on a busy connection: {resp:?}");
        Reply::read(resp.unwrap()).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Then quiet: closed within the idle timeout and a tick.
    let closed = tokio::time::timeout(Duration::from_secs(3), conn).await;
    assert!(closed.is_ok(), "a quiet connection stayed open");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_in_flight_requests_finish() {
    let a = Echo::start("a").await;
    let p = proxy_with(&public_route("http://app.test", &a.url())).await;
    let addr = p.addr();
    let in_flight =
        tokio::spawn(async move { get(addr, "app.test", "/slow/800", &[]).await.status });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let Proxy { handle, dir, .. } = p;
    let started = std::time::Instant::now();
    handle.shutdown().await;
    assert_eq!(in_flight.await.unwrap(), 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
    // Every worker's socket is closed: a restart can bind the same address at once.
    std::net::TcpListener::bind(addr).expect("the port is free after shutdown");
    drop(dir);
}

#[tokio::test]
async fn request_smuggling_shapes_are_refused_before_the_upstream() {
    let a = Echo::start("a").await;
    let p = proxy_with(&public_route("http://app.test", &a.url())).await;
    let cl_te = b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
    // hyper reads Transfer-Encoding (RFC 9112 6.3), drops Content-Length and closes the
    // connection after answering: the smuggled request is never parsed, never forwarded.
    let r = raw(p.addr(), cl_te, Duration::from_secs(2)).await;
    assert_eq!(r.matches("HTTP/1.1 ").count(), 1, "{r}");
    assert!(!r.contains("smuggled"), "{r}");
    assert_eq!(a.hits(), 1);
    let dup_cl =
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde";
    let r = raw(p.addr(), dup_cl, Duration::from_secs(2)).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn a_response_body_idle_past_idle_timeout_is_ended() {
    use http_body_util::BodyExt;
    let a = Echo::start("a").await;
    let routes = format!(
        "  - from: http://app.test\n    to: {}\n    idle_timeout: 300ms\n    allow_public_unauthenticated_access: true\n",
        a.url()
    );
    let p = proxy_with(&routes).await;
    let mut s = h1_connect(p.addr()).await;
    let req = Request::get("/stream")
        .header("host", "app.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = s.send_request(req).await.unwrap().into_body();
    // The upstream pauses 1.5 s between its two chunks: the stream is cut after 300 ms.
    let all = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("stream was not cut");
    let all = all.map(|c| c.to_bytes());
    assert!(
        all.is_err(),
        "the idle stream completed instead of being ended: {all:?}"
    );
    assert_eq!(get(p.addr(), "app.test", "/x", &[]).await.status, 200);
}

#[tokio::test]
async fn behind_a_tls_terminator_the_routes_https_scheme_is_what_the_browser_sees() {
    let a = Echo::start("a").await;
    let routes = format!(
        "  - from: https://app.test\n    to: {}\n    allow_websockets: true\n    allow_public_unauthenticated_access: true\n",
        a.url()
    );
    // insecure_server: plain HTTP here, TLS ended by another proxy in front.
    let p = proxy_with(&routes).await;
    assert_eq!(
        get(p.addr(), "app.test", "/", &[])
            .await
            .seen()
            .all("x-forwarded-proto"),
        vec!["https"]
    );
    let mut ws = ws_connect(
        p.addr(),
        "app.test",
        "/s",
        &[("origin", "https://app.test")],
    )
    .await
    .expect("https origin refused");
    assert_eq!(ws_roundtrip(&mut ws, "x").await.as_deref(), Some("x"));
    assert_eq!(
        ws_connect(p.addr(), "app.test", "/s", &[("origin", "http://app.test")])
            .await
            .err(),
        Some(403)
    );
}

#[tokio::test]
async fn upstream_connections_are_reused_and_a_body_less_response_frees_its_connection() {
    let a = Echo::start("a").await;
    let p = proxy_with(&public_route("http://app.test", &a.url())).await;
    // One client connection is served by one worker, which reuses its upstream connection.
    let mut client = h1_connect(p.addr()).await;
    let mut on_one = |path: &str, head: bool| {
        let b = if head {
            Request::head(path)
        } else {
            Request::get(path)
        };
        let req = b
            .header("host", "app.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let sent = client.send_request(req);
        async move { Reply::read(sent.await.unwrap()).await }
    };
    let first = on_one("/one", false).await.seen().peer;
    for i in 0..5 {
        let r = on_one(&format!("/n{i}"), false).await;
        assert_eq!(
            r.seen().peer,
            first,
            "a new upstream connection per request"
        );
    }
    // HEAD has no body to read: its connection goes back to the pool at once.
    assert_eq!(on_one("/h", true).await.status, 200);
    assert_eq!(on_one("/after", false).await.seen().peer, first);
    // New client connections are dealt to the workers; each worker keeps its own upstream
    // connections, so sequential requests open at most one per worker.
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let mut peers = std::collections::BTreeSet::new();
    for i in 0..(2 * workers + 2) {
        peers.insert(
            get(p.addr(), "app.test", &format!("/c{i}"), &[])
                .await
                .seen()
                .peer,
        );
    }
    assert!(
        peers.len() <= workers,
        "{} upstream connections for {workers} workers",
        peers.len()
    );
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_used_again() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that answers one request per connection, then closes it a moment later
    // (without saying `Connection: close`), as servers with short keep-alive timeouts do.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = conns.clone();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let closed = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(s);
                let _ = closed.send(());
            });
        }
    });
    let p = proxy_with(&public_route("http://app.test", &format!("http://{up}"))).await;
    // POSTs: a request that cannot be sent twice is never retried on another connection, so
    // a write to the closed one would be a 502, not a silent second try.
    for i in 0..3 {
        let r = send(
            p.addr(),
            Request::post("/")
                .header("host", "app.test")
                .body(Full::new(Bytes::from(format!("body {i}"))))
                .unwrap(),
        )
        .await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "ok"),
            "request {i}"
        );
        tokio::time::timeout(Duration::from_secs(5), closed_rx.recv())
            .await
            .expect("the upstream did not close its connection");
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 3);
}
