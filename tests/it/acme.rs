//! ACME against a real RFC 8555 server: Debian's `pebble`, with `pebble-challtestsrv` as its DNS
//! (every name resolves to 127.0.0.1). Portcullis orders certificates with TLS-ALPN-01 on its
//! HTTPS port, or HTTP-01 on its redirect port when TLS-ALPN-01 cannot reach it; the chain
//! verifies against Pebble's root; a host added by a reload gets its own certificate; a restart
//! serves the cached certificate with the ACME server gone.

use crate::support::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A UDP port that was free a moment ago: only for pebble-challtestsrv's DNS, which is started
/// again on another port if it finds this one taken (see `Pebble::start`).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Pebble {
    children: Vec<Child>,
    /// Its TCP ports, held for it (`reserve_port`).
    _ports: Vec<socket2::Socket>,
    api: SocketAddr,
    mgmt: SocketAddr,
    /// The certificate of Pebble's own API (trusted through `autocert_trusted_ca`).
    api_cert: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Pebble {
    /// Starts Pebble validating TLS-ALPN-01 on `tls_port` and HTTP-01 on `http_port`.
    async fn start(dir: &Path, tls_port: u16, http_port: u16) -> Pebble {
        for bin in ["pebble", "pebble-challtestsrv"] {
            assert!(
                Command::new(bin).arg("-h").output().is_ok(),
                "`{bin}` is not installed: `apt-get install pebble` (scripts/test does)"
            );
        }
        let (api_cert, api_key, _) = cert_files(dir, "pebble-api", &["127.0.0.1", "localhost"]);
        let (api_hold, api) = reserve_port();
        let (mgmt_hold, mgmt) = reserve_port();
        let (dns_mgmt_hold, dns_mgmt) = reserve_port();
        let api: SocketAddr = format!("127.0.0.1:{api}").parse().unwrap();
        let mgmt: SocketAddr = format!("127.0.0.1:{mgmt}").parse().unwrap();
        let cfg = dir.join("pebble.json");
        std::fs::write(
            &cfg,
            serde_json::json!({"pebble": {
                "listenAddress": api.to_string(),
                "managementListenAddress": mgmt.to_string(),
                "certificate": api_cert,
                "privateKey": api_key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }})
            .to_string(),
        )
        .unwrap();
        // The DNS server's UDP port cannot be held for it: if another process took it since it
        // was chosen, challtestsrv exits at once, and is started on another one.
        let (challtest, dns) = {
            let mut attempt = 0;
            loop {
                let dns = format!("127.0.0.1:{}", free_udp_port());
                let mut c = Command::new("pebble-challtestsrv")
                    .args([
                        "-dns01",
                        &dns,
                        "-http01",
                        "",
                        "-https01",
                        "",
                        "-tlsalpn01",
                        "",
                    ])
                    .args(["-defaultIPv6", "", "-defaultIPv4", "127.0.0.1"])
                    .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                let up = loop {
                    if c.try_wait().unwrap().is_some() {
                        break false;
                    }
                    if tokio::net::TcpStream::connect(("127.0.0.1", dns_mgmt))
                        .await
                        .is_ok()
                    {
                        break true;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "pebble-challtestsrv did not start"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                if up {
                    break (c, dns);
                }
                attempt += 1;
                assert!(attempt < 5, "pebble-challtestsrv found no free DNS port");
            }
        };
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&cfg)
            .args(["-dnsserver", &dns])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Pebble {
            children: vec![challtest, pebble],
            _ports: vec![api_hold, mgmt_hold, dns_mgmt_hold],
            api,
            mgmt,
            api_cert,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(p.api).await.is_err() {
            assert!(Instant::now() < deadline, "pebble did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    fn directory(&self) -> String {
        format!("https://{}/dir", self.api)
    }

    /// The root that signs the certificates this Pebble run issues.
    async fn root(&self) -> rustls::RootCertStore {
        let r = tls_get(self.mgmt, "localhost", "localhost", "/roots/0").await;
        assert_eq!(r.status, 200, "pebble /roots/0: {}", r.text());
        portcullis::tls::files::root_store(&r.body).unwrap()
    }
}

/// Connects to `addr` for `name`, verifying the chain against `roots`; returns the leaf.
async fn verified_leaf(
    addr: SocketAddr,
    name: &str,
    roots: &rustls::RootCertStore,
) -> Result<Vec<u8>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let sn = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(sn, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(s.get_ref().1.peer_certificates().unwrap()[0].to_vec())
}

/// Waits (up to a minute) until `name` is served a certificate that verifies against `roots`.
async fn wait_for_certificate(
    addr: SocketAddr,
    name: &str,
    roots: &rustls::RootCertStore,
) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match verified_leaf(addr, name, roots).await {
            Ok(der) => return der,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no verified certificate for {name}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

fn config(
    port: u16,
    pebble: &Pebble,
    cache: &Path,
    hosts: &[&str],
    echo: &str,
    extra: &str,
) -> String {
    let mut y = format!(
        "address: 127.0.0.1:{port}\nautocert: true\nautocert_ca: {}\nautocert_trusted_ca: {}\n\
         autocert_dir: {}\nautocert_email: ops@portcullis.test\n{extra}routes:\n",
        pebble.directory(),
        pebble.api_cert.display(),
        cache.display()
    );
    for h in hosts {
        y.push_str(&format!(
            "  - from: https://{h}\n    to: {echo}\n    allow_public_unauthenticated_access: true\n"
        ));
    }
    y
}

#[tokio::test]
async fn tls_alpn_01_issues_reload_adds_a_host_and_a_restart_reuses_the_cache() {
    init();
    let echo = Echo::start("up").await;
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("acme-cache");
    let (_port_hold, port) = reserve_port();
    let (_http_hold, http_port) = reserve_port();
    let pebble = Pebble::start(work.path(), port, http_port).await;
    let roots = pebble.root().await;

    let p = Proxy::start(&config(
        port,
        &pebble,
        &cache,
        &["one.acme.test"],
        &echo.url(),
        "",
    ))
    .await;
    let addr = p.addr();
    // Before the order completes, the fallback certificate does not verify; afterwards it does.
    let leaf = wait_for_certificate(addr, "one.acme.test", &roots).await;
    let r = tls_get(addr, "one.acme.test", "one.acme.test", "/after-acme").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.seen().target, "/after-acme");
    let expiry = p.handle.shared.acme.expiry();
    assert_eq!(expiry.len(), 1);
    assert_eq!(expiry[0].0, "one.acme.test");
    assert!(expiry[0].1 > portcullis::clock::now() as i64);

    // A host added by a config change gets its own certificate, without a restart, and
    // the first host keeps the one it has.
    std::fs::write(
        &p.config,
        config(
            port,
            &pebble,
            &cache,
            &["one.acme.test", "two.acme.test"],
            &echo.url(),
            "",
        ),
    )
    .unwrap();
    let rt = portcullis::runtime::Runtime::reload(
        &p.config,
        &portcullis::config::MapEnv::default(),
        Some(&p.handle.shared.runtime.load()),
    )
    .unwrap();
    p.handle.swap(rt);
    let leaf2 = wait_for_certificate(addr, "two.acme.test", &roots).await;
    assert_ne!(leaf, leaf2);
    assert_eq!(
        verified_leaf(addr, "one.acme.test", &roots).await.unwrap(),
        leaf
    );

    // The cache is private to the service user.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let files: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
        assert!(files.len() >= 3, "account + two certificates: {files:?}");
        for f in files {
            assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    // Restart with the ACME server gone: the cached certificate is served at once.
    let config_text = std::fs::read_to_string(&p.config).unwrap();
    p.handle.shutdown().await;
    drop(pebble);
    let p2 = Proxy::start(&config_text).await;
    let again = wait_for_certificate(p2.addr(), "one.acme.test", &roots).await;
    assert_eq!(again, leaf, "the cached certificate, not a new order");
    p2.handle.shutdown().await;
}

#[tokio::test]
async fn http_01_on_the_redirect_port_when_tls_alpn_01_cannot_reach_us() {
    init();
    let echo = Echo::start("up").await;
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("acme-cache");
    let (_port_hold, port) = reserve_port();
    let (_http_hold, http_port) = reserve_port();
    // Pebble validates TLS-ALPN-01 on a port nobody listens on ("only port 80 is open").
    let (_closed_hold, closed) = reserve_port();
    let pebble = Pebble::start(work.path(), closed, http_port).await;
    let roots = pebble.root().await;
    let extra = format!("http_redirect_addr: 127.0.0.1:{http_port}\n");
    let p = Proxy::start(&config(
        port,
        &pebble,
        &cache,
        &["web.acme.test"],
        &echo.url(),
        &extra,
    ))
    .await;
    wait_for_certificate(p.addr(), "web.acme.test", &roots).await;
    // Other paths on the redirect port still redirect, and an unknown token is a 404.
    let r = get(p.handle.redirect_addr.unwrap(), "web.acme.test", "/x", &[]).await;
    assert_eq!(r.status, 308);
    let r = get(
        p.handle.redirect_addr.unwrap(),
        "web.acme.test",
        "/.well-known/acme-challenge/not-a-token",
        &[],
    )
    .await;
    assert_eq!(r.status, 404);
    p.handle.shutdown().await;
}

/// Two replicas sharing a session store: one orders, the CA's validation reaches the other
/// (every validation connection is sent to it), which answers with the challenge the first
/// published; both then serve the one certificate issued.
#[tokio::test]
async fn two_replicas_share_one_order_and_the_one_that_did_not_order_answers_the_validation() {
    init();
    let echo = Echo::start("up").await;
    let redis = crate::support::redis::Redis::start();
    let work = tempfile::tempdir().unwrap();
    let (hold, front) = reserve_port();
    let (_http_hold, http_port) = reserve_port();
    let pebble = Pebble::start(work.path(), front, http_port).await;
    let roots = pebble.root().await;
    let host = "shared.acme.test";
    let yaml = |cache: &str| {
        config(
            0,
            &pebble,
            &work.path().join(cache),
            &[host],
            &echo.url(),
            &format!("session_store: {}\n", redis.url()),
        )
    };
    // The port Pebble validates on forwards every connection to replica b, once b is up.
    drop(hold);
    let forward_to: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", front))
        .await
        .unwrap();
    let to = forward_to.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            let Some(b) = *to.lock().unwrap() else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut u) = tokio::net::TcpStream::connect(b).await {
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                }
            });
        }
    });

    let a = Proxy::start(&yaml("cache-a")).await;
    let orders = |p: &Proxy| {
        p.handle
            .shared
            .acme
            .get(host)
            .map_or(0, |c| c.orders.load(std::sync::atomic::Ordering::Relaxed))
    };
    // a takes the lock and starts the order; b starts while a's challenge is propagating.
    let deadline = Instant::now() + Duration::from_secs(20);
    while orders(&a) == 0 {
        assert!(Instant::now() < deadline, "replica a never ordered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b = Proxy::start(&yaml("cache-b")).await;
    *forward_to.lock().unwrap() = Some(b.addr());

    let from_a = wait_for_certificate(a.addr(), host, &roots).await;
    let from_b = wait_for_certificate(b.addr(), host, &roots).await;
    assert_eq!(from_a, from_b, "both replicas serve the one certificate");
    assert_eq!((orders(&a), orders(&b)), (1, 0), "one order, by a");
    let r = tls_get(b.addr(), host, host, "/via-b").await;
    assert_eq!(r.status, 200);
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}
