//! Bypass classes from the advisory history of identity-aware proxies, tried against the real
//! server; each asserts the safe outcome. (Other classes live beside the feature they attack:
//! paths and smuggling in proxy.rs, cookies and credentials in sessions.rs, ID tokens and
//! redirects in tests/e2e, identities in policy.rs; SECURITY.md lists them all.)

use crate::support::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `/public` is open to anyone, everything else on the host needs a signed-in user (no IdP is
/// configured, so: nobody). `b` must never be reached.
async fn split_host(a: &Echo, b: &Echo, extra: &str) -> Proxy {
    Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\n{extra}routes:\n\
         \x20 - from: http://app.test\n    prefix: /public\n    to: {}\n    allow_public_unauthenticated_access: true\n\
         \x20 - from: http://app.test\n    to: {}\n    allow_any_authenticated_user: true\n",
        a.url(),
        b.url()
    ))
    .await
}

#[tokio::test]
async fn headers_that_name_another_path_or_host_never_change_the_decision() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let p = split_host(&a, &b, "").await;
    for h in [
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-uri",
        "x-forwarded-prefix",
        "x-envoy-original-path",
    ] {
        // Asking for the protected path while a header claims a public one: refused.
        let r = get(p.addr(), "app.test", "/admin", &[(h, "/public/x")]).await;
        assert_eq!(r.status, 401, "{h}");
        // Asking for a public path while a header names the protected one: the upstream
        // never sees the header, so a framework that honours it cannot be steered.
        let r = get(p.addr(), "app.test", "/public/x", &[(h, "/admin")]).await;
        assert_eq!(r.status, 200);
        let seen = r.seen();
        assert_eq!(seen.target, "/public/x");
        assert_eq!(seen.header(h), None, "{h} reached the upstream");
    }
    // X-Forwarded-Host from the client neither routes nor reaches the upstream as sent.
    let r = get(
        p.addr(),
        "app.test",
        "/public/x",
        &[("x-forwarded-host", "evil.test")],
    )
    .await;
    assert_eq!(r.seen().all("x-forwarded-host"), vec!["app.test"]);
    let r = get(
        p.addr(),
        "other.test",
        "/public/x",
        &[("x-forwarded-host", "app.test")],
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn paths_are_matched_as_sent_and_forwarded_as_decided() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let p = split_host(&a, &b, "").await;
    // Matching is case-sensitive, like the upstreams it fronts: `/PUBLIC` is not the public
    // route, so it falls to the protected catch-all.
    assert_eq!(
        get(p.addr(), "app.test", "/PUBLIC/x", &[]).await.status,
        401
    );
    assert_eq!(
        get(p.addr(), "app.test", "/Public/x", &[]).await.status,
        401
    );
    // A percent-encoded letter is decoded before matching; the upstream gets the same path.
    let r = get(p.addr(), "app.test", "/%70ublic/x", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().target, "/public/x");
    assert_eq!(
        get(p.addr(), "app.test", "/%70ublic/../admin", &[])
            .await
            .status,
        401
    );
    // A query that looks like a path is a query: decided and forwarded as /public.
    let r = get(p.addr(), "app.test", "/public?/../admin", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().target, "/public?/../admin");
    // `;` parameters are part of the segment, and a segment `..;` is refused (Tomcat reads it as `..`).
    let r = get(p.addr(), "app.test", "/public;x/y", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().target, "/public;x/y");
    // Overlong and invalid UTF-8 escapes, an encoded NUL, a raw fragment: refused.
    for bad in [
        "/public/%c0%af..",
        "/public/%ff",
        "/public/%e0%80%af",
        "/public/%00x",
    ] {
        assert_eq!(
            get(p.addr(), "app.test", bad, &[]).await.status,
            400,
            "{bad}"
        );
    }
    let frag = raw(
        p.addr(),
        b"GET /public/x#/../../admin HTTP/1.1\r\nHost: app.test\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    // A fragment is never part of a path: refused, or dropped before the decision and the
    // upstream alike.
    if !frag.starts_with("HTTP/1.1 400") {
        assert!(frag.starts_with("HTTP/1.1 200"), "{frag}");
        assert!(frag.contains("\"target\":\"/public/x\""), "{frag}");
    }
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn a_prefix_rewrite_never_sends_a_path_that_resolves_outside_its_prefix() {
    // A public route for static files, rewritten; the upstream (like nginx or a static server)
    // would resolve `/assets/../admin/x` to `/admin/x`, which nobody decided on.
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\nroutes:\n\
         \x20 - from: http://app.test\n    prefix: /static\n    prefix_rewrite: /assets/\n    to: {}\n    allow_public_unauthenticated_access: true\n\
         \x20 - from: http://app.test\n    to: {}\n    allow_any_authenticated_user: true\n",
        a.url(),
        b.url()
    ))
    .await;
    let r = get(p.addr(), "app.test", "/static/app.js", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().target, "/assets/app.js");
    for bad in [
        "/static../admin/x",
        "/static%2e%2e/admin/x",
        "/static%2E./admin/x",
        "/static..;x/admin/x",
        "/static.;x/admin/x",
        "/static..",
        "/static.",
    ] {
        let r = get(p.addr(), "app.test", bad, &[]).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    assert_eq!(a.hits(), 1);
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn only_websocket_upgrades_are_tunnelled_and_what_follows_a_refusal_is_decided_again() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let p = split_host(&a, &b, "").await;
    // h2c upgrade on a public route: served as plain HTTP/1.1, the upgrade not passed on.
    let out = raw(
        p.addr(),
        b"GET /public/x HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!out.contains("101"), "{out}");
    let seen: Seen = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap_or("{}")).unwrap();
    assert_eq!(seen.header("upgrade"), None);
    assert_eq!(seen.header("http2-settings"), None);
    // A refused WebSocket upgrade (no allow_websockets) followed by a smuggled request for the
    // protected path on the same connection: nothing reaches an upstream; the smuggled request
    // is decided on its own (401: no session), never answered by an upstream.
    let hits = a.hits();
    let out = raw(
        p.addr(),
        b"GET /public/x HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nOrigin: http://app.test\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.test\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    let statuses: Vec<&str> = out
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|r| r.get(..3).unwrap_or(r))
        .collect();
    assert!(
        statuses == ["403"] || statuses == ["403", "401"],
        "responses {statuses:?}: {out}"
    );
    assert_eq!((a.hits(), b.hits()), (hits, 0));
    // CONNECT, a rootless target and a duplicate Host are refused; `OPTIONS *` is answered by
    // Portcullis itself. None reaches an upstream.
    for req in [
        &b"CONNECT app.test:80 HTTP/1.1\r\nHost: app.test:80\r\n\r\n"[..],
        b"GET admin HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"GET /public/x HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n",
    ] {
        let out = raw(p.addr(), req, Duration::from_secs(2)).await;
        assert!(out.starts_with("HTTP/1.1 4"), "{out}");
    }
    let out = raw(
        p.addr(),
        b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 204") || out.starts_with("HTTP/1.1 4"),
        "{out}"
    );
    assert!(!out.contains("x-echo-name"), "{out}");
    assert_eq!(a.hits(), hits);
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn identity_names_in_trailers_never_reach_the_upstream() {
    // The scripted upstream sees the chunked body exactly as the proxy sent it, trailer section
    // included (the echo upstream would drop trailers itself).
    let up = Scripted::start(|g| (ok(g.path()), false)).await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\nroutes:\n  - from: http://app.test\n    to: {}\n    allow_public_unauthenticated_access: true\n",
        up.url()
    ))
    .await;
    let out = raw(
        p.addr(),
        b"POST /x HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Forwarded-User\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nX-Forwarded-User: admin@example.com\r\nX_Forwarded_User: admin@example.com\r\nX-Innocent: 1\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let got = up.got();
    assert_eq!(got.len(), 1);
    let body = String::from_utf8_lossy(&got[0].body).to_ascii_lowercase();
    // The body arrived whole, and its trailer section is empty: no field of the client's.
    assert!(body.starts_with("3\r\nabc\r\n"), "{body:?}");
    assert!(body.ends_with("0\r\n\r\n"), "{body:?}");
    assert!(!body.contains("admin@example.com"), "{body:?}");
    assert!(!body.contains("x-innocent"), "{body:?}");
    let head = got[0].head.to_ascii_lowercase();
    assert!(
        !head.contains("admin@example.com") && !head.contains("\r\ntrailer:"),
        "{head}"
    );
}

#[tokio::test]
async fn obfuscated_transfer_encodings_never_let_a_request_reach_the_upstream_undecided() {
    // One upstream behind a public path and a protected rest; it records every request head
    // it is sent. A request hidden in a body must never arrive there as a head of its own.
    let up = Scripted::start(|g| (ok(g.path()), false)).await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\nroutes:\n\
         \x20 - from: http://app.test\n    prefix: /public\n    to: {u}\n    allow_public_unauthenticated_access: true\n\
         \x20 - from: http://app.test\n    to: {u}\n    allow_any_authenticated_user: true\n",
        u = up.url()
    ))
    .await;
    let hidden = "0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app.test\r\n\r\n";
    for te in [
        "Transfer-Encoding: chunked ,",
        "Transfer-Encoding: , chunked",
        "Transfer-Encoding:\tchunked",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunkedx",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "Transfer-Encoding: identity\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding: \"chunked\"",
        "Transfer-Encoding: gzip, chunked",
    ] {
        for cl in [
            format!("\r\nContent-Length: {}", hidden.len()),
            String::new(),
        ] {
            let req =
                format!("POST /public/x HTTP/1.1\r\nHost: app.test\r\n{te}{cl}\r\n\r\n{hidden}");
            let out = raw(p.addr(), req.as_bytes(), Duration::from_secs(2)).await;
            for status in out.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]) {
                assert!(
                    matches!(status, "200" | "400" | "401" | "501"),
                    "{te:?}{cl:?}: {out}"
                );
            }
            assert!(
                !up.got().iter().any(|g| g.path().starts_with("/admin")),
                "{te:?}{cl:?}: a hidden request reached the upstream as a request: {:?}",
                up.got()
            );
        }
    }
}

#[tokio::test]
async fn a_request_without_a_session_is_answered_before_its_body_is_read() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let p = split_host(&a, &b, "").await;
    let mut tcp = TcpStream::connect(p.addr()).await.unwrap();
    tcp.write_all(b"POST /admin HTTP/1.1\r\nHost: app.test\r\nExpect: 100-continue\r\nContent-Length: 1073741824\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf))
        .await
        .expect("no answer without the body")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(!head.contains("100 Continue"), "{head}");
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn connection_caps_hold_one_client_back_and_others_keep_being_served() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let p = split_host(&a, &b, "max_connections_per_ip: 8\n").await;
    let addr = p.addr();
    // One client (127.0.0.1) opens its 8 and more; the extra ones are closed at once.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // The server has accepted and counted them.
    until_metric(&p, "portcullis_connections_open", 8.0).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), extra.read(&mut buf))
        .await
        .expect("the extra connection was neither served nor closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "over the cap, yet served");
    // Another client address is served meanwhile.
    let r = from_other_client(addr).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // Closing one frees a place for the first client again.
    drop(held.pop());
    until_metric(&p, "portcullis_connections_open", 7.0).await;
    let r = get(addr, "app.test", "/public/x", &[]).await;
    assert_eq!(r.status, 200);
    let m = p.handle.shared.metrics.render();
    assert_eq!(
        metric(&m, "portcullis_connections_refused_total"),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test]
async fn the_global_connection_cap_holds_every_client_back() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let p = split_host(&a, &b, "max_connections: 4\n").await;
    let addr = p.addr();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    until_metric(&p, "portcullis_connections_open", 4.0).await;
    // Over the cap, any client (another address too) is closed at once, unserved.
    let r = from_other_client(addr).await;
    assert_eq!(r, "", "over the global cap, yet served");
    let m = p.handle.shared.metrics.render();
    assert_eq!(
        metric(&m, "portcullis_connections_refused_total"),
        Some(1.0),
        "{m}"
    );
    drop(held.pop());
    until_metric(&p, "portcullis_connections_open", 3.0).await;
    assert!(from_other_client(addr).await.starts_with("HTTP/1.1 200"));
    assert_eq!(b.hits(), 0);
}

/// One request from 127.0.0.2 (another client address on loopback).
/// What came back before the server closed the connection (a refused connection gets
/// nothing); the test fails if it neither answered nor closed within 3 s.
async fn from_other_client(addr: SocketAddr) -> String {
    let s = TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut tcp = s.connect(addr).await.unwrap();
    // A connection over a cap may already be closed: the write can fail.
    let _ = tcp
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("neither answered nor closed within 3 s");
    String::from_utf8_lossy(&out).into_owned()
}

/// HTTP/2 with prior knowledge over plain TCP (the server speaks it on `insecure_server`).
async fn h2_client(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(conn))
}

fn h2_get(path: &str) -> http::Request<()> {
    http::Request::get(format!("http://app.test{path}"))
        .body(())
        .unwrap()
}

#[tokio::test]
async fn http2_rapid_reset_ends_the_attackers_connection_and_others_are_served() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let p = split_host(&a, &b, "").await;
    let (mut send, conn) = h2_client(p.addr()).await;
    let started = Instant::now();
    let mut sent = 0;
    for _ in 0..20_000 {
        let Ok(ready) = send.clone().ready().await else {
            break;
        };
        send = ready;
        match send.send_request(h2_get("/public/slow/1000"), true) {
            Ok((_resp, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => break,
        }
        sent += 1;
        if conn.is_finished() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(
        ended.is_ok(),
        "the server kept a connection open after {sent} rapid resets"
    );
    assert!(sent < 20_000, "all {sent} resets were accepted");
    // Another client is served normally.
    let (send2, _c2) = h2_client(p.addr()).await;
    let (resp, _) = send2
        .ready()
        .await
        .unwrap()
        .send_request(h2_get("/public/ok"), true)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test]
async fn http2_continuation_flood_is_cut_off_with_bounded_reads() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let p = split_host(&a, &b, "").await;
    let mut tcp = TcpStream::connect(p.addr()).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
                                                           // HEADERS on stream 1 without END_HEADERS: `:method GET` (indexed 2), `:path /` (4),
                                                           // `:scheme http` (6).
    hello.extend_from_slice(&[0, 0, 3, 1, 0x01, 0, 0, 0, 1, 0x82, 0x84, 0x86]);
    tcp.write_all(&hello).await.unwrap();
    // CONTINUATION frames, each a 16 KiB literal header `x-flood: aaa…`, never ending.
    let value = vec![b'a'; 16 * 1024 - 16];
    let mut block = vec![0x00, 7];
    block.extend_from_slice(b"x-flood");
    // HPACK string length with 7-bit prefix: 127 + varint remainder.
    let mut len = value.len() - 127;
    block.push(0x7f);
    while len >= 128 {
        block.push((len % 128) as u8 | 0x80);
        len /= 128;
    }
    block.push(len as u8);
    block.extend_from_slice(&value);
    let n = block.len();
    let mut frame = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, 9, 0, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        // 256 MiB is far beyond any header limit; the server must stop us long before.
        while sent < 256 * 1024 * 1024 {
            if wr.write_all(&frame).await.is_err() {
                break;
            }
            sent += frame.len();
        }
        sent
    });
    // The server answers with GOAWAY (or a reset) and closes.
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept reading an endless header block"
    );
    let sent = writer.await.unwrap();
    assert!(
        sent < 64 * 1024 * 1024,
        "the server took {sent} bytes of headers"
    );
    assert_eq!(b.hits() + a.hits(), 0);
    // Still serving.
    assert_eq!(
        get(p.addr(), "app.test", "/public/x", &[]).await.status,
        200
    );
}

#[tokio::test]
async fn http2_concurrency_is_capped_per_connection() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let p = split_host(&a, &b, "").await;
    let (send, _conn) = h2_client(p.addr()).await;
    let send = send.ready().await.unwrap();
    // The server's SETTINGS arrive with the first exchange.
    let (resp, _) = send
        .clone()
        .send_request(h2_get("/public/x"), true)
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    assert_eq!(send.current_max_send_streams(), 250);
}

#[tokio::test]
async fn pages_escape_what_they_reflect_and_carry_the_security_headers() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let p = split_host(&a, &b, "hsts_max_age: 365d\n").await;
    let evil = "%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    for path in [
        format!("/.portcullis/callback?code={evil}&state={evil}"),
        format!("/.portcullis/sign_in?redirect_uri={evil}"),
        format!("/{evil}"),
    ] {
        let r = get(p.addr(), "app.test", &path, &[("accept", "text/html")]).await;
        let body = r.text();
        assert!(!body.contains("<script>alert"), "{path}: {body}");
        assert!(
            r.status.is_client_error() || r.status.is_server_error() || r.status.is_redirection()
        );
        let h = &r.headers;
        assert_eq!(
            h.get("x-frame-options").map(|v| v.to_str().unwrap()),
            Some("DENY"),
            "{path}"
        );
        assert!(h.get("content-security-policy").is_some(), "{path}");
        assert_eq!(
            h.get("cache-control").map(|v| v.to_str().unwrap()),
            Some("no-store"),
            "{path}"
        );
        assert!(h.get("access-control-allow-origin").is_none(), "{path}");
        assert_eq!(
            h.get("x-content-type-options").map(|v| v.to_str().unwrap()),
            Some("nosniff")
        );
        assert_eq!(
            h.get("referrer-policy").map(|v| v.to_str().unwrap()),
            Some("no-referrer")
        );
        assert_eq!(
            h.get("strict-transport-security")
                .map(|v| v.to_str().unwrap()),
            Some("max-age=31536000"),
            "{path}"
        );
    }
    // Proxied responses get HSTS too.
    let r = get(p.addr(), "app.test", "/public/x", &[]).await;
    assert_eq!(
        r.headers
            .get("strict-transport-security")
            .map(|v| v.to_str().unwrap()),
        Some("max-age=31536000")
    );
}

#[tokio::test]
async fn client_address_headers_never_satisfy_source_ip() {
    let a = Echo::start("a").await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\nroutes:\n\
         \x20 - from: http://app.test\n    to: {}\n    policy:\n      - allow:\n          or:\n            - source_ip: {{ in: [10.0.0.0/8] }}\n",
        a.url()
    ))
    .await;
    for (h, v) in [
        ("x-forwarded-for", "10.1.2.3"),
        ("x-forwarded-for", "10.1.2.3, 10.9.9.9"),
        ("forwarded", "for=10.1.2.3"),
        ("x-real-ip", "10.1.2.3"),
        ("x-client-ip", "10.1.2.3"),
        ("true-client-ip", "10.1.2.3"),
        ("cf-connecting-ip", "10.1.2.3"),
        ("x_real_ip", "10.1.2.3"),
    ] {
        let r = get(p.addr(), "app.test", "/", &[(h, v)]).await;
        assert_eq!(r.status, 403, "{h}: {v}");
    }
    assert_eq!(a.hits(), 0);
    // The control: the same rule admits a client that really is in the range.
    let p2 = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\nroutes:\n\
         \x20 - from: http://app.test\n    to: {}\n    policy:\n      - allow:\n          or:\n            - source_ip: {{ in: [127.0.0.0/8] }}\n",
        a.url()
    ))
    .await;
    assert_eq!(get(p2.addr(), "app.test", "/", &[]).await.status, 200);
}

/// A real-looking sign-in set-up whose IdP nobody answers for: nothing may wait on it.
async fn unanswered_idp(a: &Echo) -> Proxy {
    Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=\n\
         idp_provider_url: http://127.0.0.1:9\nidp_client_id: c\nidp_client_secret: s\nroutes:\n\
         \x20 - from: http://app.test\n    to: {}\n    allow_any_authenticated_user: true\n",
        a.url()
    ))
    .await
}

#[tokio::test]
async fn callback_parameters_are_bounded_before_any_work() {
    let a = Echo::start("a").await;
    let p = unanswered_idp(&a).await;
    let long = "a".repeat(5000);
    for q in [
        format!("code={long}&state=s"),
        format!("code=c&state={long}"),
        format!("code=c&state=s&x={}", "b".repeat(20_000)),
    ] {
        let started = Instant::now();
        let r = get(
            p.addr(),
            "app.test",
            &format!("/.portcullis/callback?{q}"),
            &[("accept", "text/html")],
        )
        .await;
        assert_eq!(r.status, 400, "{}", &q[..20]);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!r.text().contains(&long[..100]), "the value is echoed back");
    }
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn a_callback_uses_up_only_its_own_login_cookie_and_login_cookies_stay_bounded() {
    let a = Echo::start("a").await;
    let p = unanswered_idp(&a).await;
    let state = |i: usize| format!("{i:0>22}");
    let logins = |n: usize| -> String {
        (0..n)
            .map(|i| format!("__Host-_portcullis_csrf_{}=x{i}", state(i)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let expired = |r: &Reply| -> Vec<String> {
        let mut v: Vec<String> = r
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().expect("ascii").to_string())
            .filter(|v| v.contains("Max-Age=0"))
            .map(|v| v.split('=').next().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    };
    // Another tab's sign-in keeps its cookie: only the callback's own state is used up (its
    // sealed value is no good here, so the sign-in itself fails).
    let cookies = logins(3);
    let r = get(
        p.addr(),
        "app.test",
        &format!("/.portcullis/callback?code=c&state={}", state(1)),
        &[("cookie", &cookies), ("accept", "text/html")],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        expired(&r),
        [format!("__Host-_portcullis_csrf_{}", state(1))]
    );
    // A state Portcullis never makes names no cookie at all.
    let r = get(
        p.addr(),
        "app.test",
        "/.portcullis/callback?code=c&state=_portcullis;x",
        &[("cookie", &cookies), ("accept", "text/html")],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(expired(&r), Vec::<String>::new());
    // More sign-ins in progress than MAX_LOGINS: every login cookie goes.
    let r = get(
        p.addr(),
        "app.test",
        &format!("/.portcullis/callback?code=c&state={}", state(1)),
        &[("cookie", &logins(9)), ("accept", "text/html")],
    )
    .await;
    assert_eq!(r.status, 400);
    let mut all: Vec<String> = (0..9)
        .map(|i| format!("__Host-_portcullis_csrf_{}", state(i)))
        .collect();
    all.sort();
    assert_eq!(expired(&r), all);
    assert_eq!(a.hits(), 0);
}
