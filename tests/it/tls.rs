//! TLS termination: certificates by SNI, ALPN, 421 on SNI/Host mismatch, the redirect port,
//! the self-signed fallback, and https upstreams.

use crate::support::*;
use std::sync::Arc;
use std::time::Duration;

fn leaf_names(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn the_certificate_is_chosen_by_sni_and_h2_and_http1_are_offered() {
    let a = Echo::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let (c1, k1, _) = cert_files(dir.path(), "one", &["one.test"]);
    let (c2, k2, _) = cert_files(dir.path(), "two", &["two.test"]);
    let yaml = format!(
        "address: 127.0.0.1:0\ncertificates:\n  - {{cert: {}, key: {}}}\n  - {{cert: {}, key: {}}}\nroutes:\n\
         \x20 - from: https://one.test\n    to: {a}\n    allow_public_unauthenticated_access: true\n\
         \x20 - from: https://two.test\n    to: {a}\n    allow_public_unauthenticated_access: true\n",
        c1.display(), k1.display(), c2.display(), k2.display(), a = a.url()
    );
    let p = Proxy::start(&yaml).await;
    let der1 = leaf_names(&tls_connect(p.addr(), "one.test", &[b"http/1.1"]).await);
    let der2 = leaf_names(&tls_connect(p.addr(), "two.test", &[b"http/1.1"]).await);
    assert_ne!(der1, der2);
    assert_eq!(
        der1,
        rustls_pki_types::pem::PemObject::from_pem_file(&c1)
            .map(|c: rustls_pki_types::CertificateDer| c.to_vec())
            .unwrap()
    );
    assert_eq!(
        der2,
        rustls_pki_types::pem::PemObject::from_pem_file(&c2)
            .map(|c: rustls_pki_types::CertificateDer| c.to_vec())
            .unwrap()
    );

    let r = tls_get(p.addr(), "one.test", "one.test", "/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().header("x-forwarded-proto"), Some("https"));
    let (version, r) = h2_get(p.addr(), "two.test", "/h2").await;
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().target, "/h2");
}

#[tokio::test]
async fn a_request_for_another_host_than_the_sni_name_is_421() {
    let a = Echo::start("a").await;
    let yaml = format!(
        "address: 127.0.0.1:0\nroutes:\n\
         \x20 - from: https://one.test\n    to: {a}\n    allow_public_unauthenticated_access: true\n\
         \x20 - from: https://two.test\n    to: {a}\n    allow_public_unauthenticated_access: true\n",
        a = a.url()
    );
    let p = Proxy::start(&yaml).await;
    assert_eq!(
        tls_get(p.addr(), "one.test", "two.test", "/").await.status,
        421
    );
    assert_eq!(
        tls_get(p.addr(), "one.test", "one.test", "/").await.status,
        200
    );
    // HTTP/2 too: a connection opened for one.test carries no request for two.test.
    let (version, r) = h2_get_as(p.addr(), "one.test", "two.test", "/").await;
    assert_eq!((version, r.status.as_u16()), (http::Version::HTTP_2, 421));
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_tls_handshake_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_a, p) = public_one_test().await;
    // Half a ClientHello, then nothing.
    let mut tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a stalled handshake held its connection for 20 s"
    );
    // The handshake timeout is 10 s.
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "closed before the timeout"
    );
    // And it no longer counts as open.
    until_metric(&p, "portcullis_connections_open", 0.0).await;
}

#[tokio::test]
async fn http2_extended_connect_is_not_offered() {
    let (_a, p) = public_one_test().await;
    let s = tls_connect(p.addr(), "one.test", &[b"h2"]).await;
    let (mut send, conn) = h2::client::handshake(s).await.unwrap();
    tokio::spawn(conn);
    // The server's SETTINGS have arrived once a request has been answered.
    let req = http::Request::get("https://one.test/").body(()).unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    assert!(
        !send.is_extended_connect_protocol_enabled(),
        "SETTINGS_ENABLE_CONNECT_PROTOCOL offered (WebSockets over HTTP/2 would bypass the upgrade checks)"
    );
}

#[tokio::test]
async fn without_certificates_a_self_signed_one_covers_the_route_hosts() {
    let a = Echo::start("a").await;
    let yaml = format!(
        "address: 127.0.0.1:0\nroutes:\n  - from: https://localhost\n    to: {}\n    allow_public_unauthenticated_access: true\n",
        a.url()
    );
    let p = Proxy::start(&yaml).await;
    let s = tls_connect(p.addr(), "localhost", &[b"http/1.1"]).await;
    let der = rustls_pki_types::CertificateDer::from(leaf_names(&s));
    let ee = webpki::EndEntityCert::try_from(&der).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    assert!(ee.verify_is_valid_for_subject_name(&name).is_ok());
    assert!(p
        .handle
        .shared
        .runtime
        .load()
        .warnings
        .iter()
        .any(|w| w.contains("self-signed")));
}

#[tokio::test]
async fn the_redirect_port_sends_route_hosts_to_https_with_path_and_query() {
    let a = Echo::start("a").await;
    let yaml = format!(
        "address: 127.0.0.1:0\nhttp_redirect_addr: 127.0.0.1:0\nroutes:\n  - from: https://app.test\n    to: {}\n    allow_public_unauthenticated_access: true\n",
        a.url()
    );
    let p = Proxy::start(&yaml).await;
    let r = get(p.handle.redirect_addr.unwrap(), "app.test", "/a/b?c=d", &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers["location"],
        format!("https://app.test:{}/a/b?c=d", p.port()).as_str()
    );
    assert_eq!(
        get(p.handle.redirect_addr.unwrap(), "evil.test", "/", &[])
            .await
            .status,
        404
    );
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn https_upstreams_are_verified_against_a_custom_ca_and_server_name() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, pem) = cert_files(dir.path(), "up", &["upstream.internal"]);
    let ck = portcullis::tls::files::load_pair(
        &cert,
        &key,
        &rustls::crypto::aws_lc_rs::default_provider(),
    )
    .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let scfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            ck.cert.clone(),
            rustls_pki_types::PrivateKeyDer::from_pem_file(&key).unwrap(),
        )
        .unwrap();
    use rustls_pki_types::pem::PemObject;
    let up = Echo::start_tls("tls-up", Arc::new(scfg)).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let yaml = format!(
        "address: 127.0.0.1:0\ninsecure_server: true\nroutes:\n\
         \x20 - from: http://good.test\n    to: https://{addr}\n    tls_custom_ca: {ca}\n    tls_server_name: upstream.internal\n    allow_public_unauthenticated_access: true\n\
         \x20 - from: http://wrongname.test\n    to: https://{addr}\n    tls_custom_ca: {ca}\n    allow_public_unauthenticated_access: true\n\
         \x20 - from: http://untrusted.test\n    to: https://{addr}\n    tls_server_name: upstream.internal\n    allow_public_unauthenticated_access: true\n\
         \x20 - from: http://skip.test\n    to: https://{addr}\n    tls_skip_verify: true\n    allow_public_unauthenticated_access: true\n",
        addr = up.addr,
        ca = ca.display()
    );
    let p = Proxy::start(&yaml).await;
    let r = get(p.addr(), "good.test", "/x", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().upstream, "tls-up");
    // The certificate names upstream.internal, not 127.0.0.1: refused.
    assert_eq!(get(p.addr(), "wrongname.test", "/", &[]).await.status, 502);
    // Not signed by a trusted root: refused.
    assert_eq!(get(p.addr(), "untrusted.test", "/", &[]).await.status, 502);
    assert_eq!(get(p.addr(), "skip.test", "/", &[]).await.status, 200);
    assert!(p
        .handle
        .shared
        .runtime
        .load()
        .warnings
        .iter()
        .any(|w| w.contains("tls_skip_verify")));
    let _ = Duration::ZERO;
}

#[tokio::test]
async fn the_expiry_of_each_served_certificate_is_a_metric() {
    let a = Echo::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let (c1, k1, _) = cert_files(dir.path(), "one", &["one.test"]);
    let yaml = format!(
        "address: 127.0.0.1:0\nmetrics_address: 127.0.0.1:0\ncertificates:\n  - {{cert: {}, key: {}}}\nroutes:\n\
         \x20 - from: https://one.test\n    to: {a}\n    allow_public_unauthenticated_access: true\n",
        c1.display(), k1.display(), a = a.url()
    );
    let p = Proxy::start(&yaml).await;
    let m = get(p.handle.admin_addr.unwrap(), "localhost", "/metrics", &[])
        .await
        .text();
    let line = m
        .lines()
        .find(|l| {
            l.starts_with(
                "portcullis_certificate_expiry_timestamp_seconds{certificate=\"one.test\"}",
            )
        })
        .expect(&m);
    let t: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // rcgen's default validity ends in 4096.
    assert!(t > now, "{line}");
}

#[tokio::test]
async fn a_certificate_file_replaced_on_disk_is_served_without_a_restart() {
    let a = Echo::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let (c1, k1, _) = cert_files(dir.path(), "live", &["one.test"]);
    let yaml = format!(
        "address: 127.0.0.1:0\ncertificates:\n  - {{cert: {}, key: {}}}\nroutes:\n\
         \x20 - from: https://one.test\n    to: {a}\n    allow_public_unauthenticated_access: true\n",
        c1.display(),
        k1.display(),
        a = a.url()
    );
    let p = Proxy::start(&yaml).await;
    let addr = p.addr();
    let before = leaf_names(&tls_connect(addr, "one.test", &[b"http/1.1"]).await);
    // The watcher takes its first look when made: what changes after this is seen.
    let watcher = {
        let config: &'static std::path::Path = Box::leak(p.config.clone().into_boxed_path());
        let handle: &'static portcullis::server::Handle = Box::leak(Box::new(p.handle));
        tokio::spawn(portcullis::server::reload::run(handle, config))
    };
    // What certbot or cert-manager does: write the new pair beside, then rename over.
    let renewed = tempfile::tempdir().unwrap();
    let (c2, k2, _) = cert_files(renewed.path(), "live", &["one.test"]);
    std::fs::rename(&k2, &k1).unwrap();
    std::fs::rename(&c2, &c1).unwrap();
    let want = rustls_pki_types::pem::PemObject::from_pem_file(&c1)
        .map(|c: rustls_pki_types::CertificateDer| c.to_vec())
        .unwrap();
    assert_ne!(before, want);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = leaf_names(&tls_connect(addr, "one.test", &[b"http/1.1"]).await);
        if now == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old certificate is still served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watcher.abort();
}

/// A public route on `one.test` to an echo upstream.
async fn public_one_test() -> (Echo, Proxy) {
    let a = Echo::start("a").await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\nroutes:\n\
         \x20 - from: https://one.test\n    to: {}\n    allow_public_unauthenticated_access: true\n",
        a.url()
    ))
    .await;
    (a, p)
}

#[tokio::test]
async fn a_returning_client_resumes_its_tls_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_a, p) = public_one_test().await;
    let cfg = tls_client_any(&[b"http/1.1"]);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("one.test").unwrap();
        let mut s = tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: one.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        assert!(out.starts_with(b"HTTP/1.1 200"));
        kinds.push(s.get_ref().1.handshake_kind());
    }
    assert_eq!(kinds[0], Some(rustls::HandshakeKind::Full));
    assert_eq!(kinds[1], Some(rustls::HandshakeKind::Resumed));
}

#[tokio::test]
async fn aes_128_gcm_is_chosen_even_when_the_client_lists_aes_256_first() {
    let (_a, p) = public_one_test().await;
    // Like OpenSSL's clients (wrk, curl): AES-256-GCM-SHA384 first.
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    let provider = Arc::new(provider);
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(portcullis::upstream::NoVerify(provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("one.test").unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let suite = s.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
    assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
}
