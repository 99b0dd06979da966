//! TCP routes: `CONNECT host:port` decided by the policy of the route that names exactly that
//! host and port, bytes relayed to its `tcp://` target, the tunnel ended when access ends; and
//! the sign-in page that hands `portcullis tcp` its session.

use crate::sessions::{alice, cookie_of, key, session, SECRET};
use crate::support::*;
use portcullis::clock::now;
use portcullis::policy::Identity;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP echo that counts the connections it accepted and the bytes it received.
struct Target {
    port: u16,
    accepted: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl Target {
    async fn start() -> Target {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (a, b) = (accepted.clone(), bytes.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                tokio::spawn(async move {
                    // A banner first, as sshd sends one before the client speaks.
                    let _ = s.write_all(b"HELLO\n").await;
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                b.fetch_add(n, Ordering::SeqCst);
                                if s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        Target {
            port,
            accepted,
            bytes,
        }
    }

    fn seen(&self) -> (usize, usize) {
        (
            self.accepted.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }
}

fn config(target: &Target, policy: &str) -> String {
    format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\n\
         routes:\n  - from: tcp+https://ssh.test:22\n    to: tcp://127.0.0.1:{}\n    {policy}\n\
         \x20 - from: http://app.test\n    to: http://127.0.0.1:9\n    allow_any_authenticated_user: true\n",
        target.port
    )
}

async fn proxy(target: &Target) -> Proxy {
    Proxy::start(&config(target, "allowed_domains: [example.com]")).await
}

/// The CONNECT's answer head (up to its blank line) and the stream, left at the first byte
/// after it.
async fn connect(p: &Proxy, authority: &str, extra: &[(&str, &str)]) -> (String, TcpStream) {
    let mut tcp = TcpStream::connect(p.addr()).await.unwrap();
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut b)).await {
            Ok(Ok(1)) => head.push(b[0]),
            _ => break,
        }
    }
    (String::from_utf8_lossy(&head).into_owned(), tcp)
}

fn status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The session in a `Proxy-Authorization` value, sealed as the sign-in page seals it.
fn token(host: &str, s: &portcullis::auth::session::Session) -> String {
    format!("Portcullis {}", key().seal("cli", host, s).unwrap())
}

/// A CONNECT to the TCP route with `s` as the CLI's session.
async fn tunnel_as(p: &Proxy, s: &portcullis::auth::session::Session) -> (String, TcpStream) {
    connect(
        p,
        "ssh.test:22",
        &[("proxy-authorization", &token("ssh.test", s))],
    )
    .await
}

/// The session a tunnel's `200` gives the CLI to keep.
fn kept(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("portcullis-session: "))
        .expect("a session to keep")
        .to_string()
}

/// Reads exactly `n` bytes, or what came before the peer closed or a second passed.
async fn read_n(tcp: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut out[got..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(k)) => got += k,
        }
    }
    out.truncate(got);
    out
}

async fn echoes(tcp: &mut TcpStream) -> bool {
    if read_n(tcp, 6).await != b"HELLO\n" {
        return false;
    }
    tcp.write_all(b"ping").await.is_ok() && read_n(tcp, 4).await == b"ping"
}

/// Closed by the other side within `within` (EOF or reset), rather than still open.
async fn closed(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn an_allowed_user_tunnels_with_the_cli_session_which_works_only_as_itself_and_never_a_cookie(
) {
    let t = Target::start().await;
    let p = proxy(&t).await;
    let s = session(now() + 600, alice());
    let (head, mut tcp) = tunnel_as(&p, &s).await;
    assert_eq!(status(&head), 200, "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    assert!(echoes(&mut tcp).await, "bytes relayed both ways");
    // The session cookie opens no tunnel (no browser sends a CONNECT; with a cookie_domain it
    // would open every host's TCP routes).
    let cookie = cookie_of(None, "ssh.test", &s);
    let (head, _) = connect(&p, "ssh.test:22", &[("cookie", &cookie)]).await;
    assert_eq!(status(&head), 407, "{head}");
    assert_eq!(t.seen().0, 1);

    // The cookie's value is not a CLI token, a CLI token is no cookie, and neither opens for
    // another host.
    let sealed_cookie = key().seal("session", "ssh.test", &s).unwrap();
    let as_token = format!("Portcullis {sealed_cookie}");
    let (head, _) = connect(&p, "ssh.test:22", &[("proxy-authorization", &as_token)]).await;
    assert_eq!(status(&head), 407, "{head}");
    let cli = key().seal("cli", "app.test", &s).unwrap();
    let r = get(
        p.addr(),
        "app.test",
        "/",
        &[
            ("cookie", &format!("_portcullis={cli}")),
            ("accept", "application/json"),
        ],
    )
    .await;
    assert_eq!(r.status, 401);
    let (head, _) = connect(
        &p,
        "ssh.test:22",
        &[("proxy-authorization", &token("app.test", &s))],
    )
    .await;
    assert_eq!(status(&head), 407, "{head}");
    // Another scheme, or an expired session: no session.
    let basic = format!("Basic {}", key().seal("cli", "ssh.test", &s).unwrap());
    let (head, _) = connect(&p, "ssh.test:22", &[("proxy-authorization", &basic)]).await;
    assert_eq!(status(&head), 407, "{head}");
    let old = session(now() - 1, alice());
    let (head, _) = tunnel_as(&p, &old).await;
    assert_eq!(status(&head), 407, "{head}");
    assert_eq!(t.seen().0, 1, "no refused CONNECT reached the target");
}

#[tokio::test]
async fn without_a_session_or_with_a_refused_user_no_byte_reaches_the_target() {
    let t = Target::start().await;
    let p = proxy(&t).await;
    let (head, mut tcp) = connect(&p, "ssh.test:22", &[("accept", "application/json")]).await;
    assert_eq!(status(&head), 407, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authenticate: portcullis"),
        "{head}"
    );
    // Bytes sent after a refusal are never relayed: the connection is HTTP still.
    let _ = tcp.write_all(b"SSH-2.0-sneaky\r\n").await;
    let bob = Identity {
        sub: "u-bob".into(),
        email: Some("bob@other.test".into()),
        email_verified: Some(true),
        ..alice()
    };
    let s = session(now() + 600, bob);
    let (head, mut tcp2) = connect(
        &p,
        "ssh.test:22",
        &[
            ("proxy-authorization", &token("ssh.test", &s)),
            ("accept", "application/json"),
        ],
    )
    .await;
    assert_eq!(status(&head), 403, "{head}");
    let body = String::from_utf8_lossy(&read_n(&mut tcp2, 200).await).into_owned();
    assert!(
        body.contains("bob@other.test"),
        "the refusal names the user: {body}"
    );
    let _ = tcp2.write_all(b"SSH-2.0-sneaky\r\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.seen(), (0, 0), "the target saw nothing");
}

#[tokio::test]
async fn only_a_host_and_port_a_tcp_route_names_is_tunnelled_and_http_never_reaches_it() {
    let t = Target::start().await;
    let p = proxy(&t).await;
    let s = session(now() + 600, alice());
    for authority in [
        "ssh.test:23".to_string(),
        "SSH.test:2200".to_string(),
        format!("127.0.0.1:{}", t.port),
        "app.test:80".to_string(),
        "other.test:22".to_string(),
    ] {
        let host = authority.split(':').next().unwrap().to_ascii_lowercase();
        let (head, _) = connect(
            &p,
            &authority,
            &[("proxy-authorization", &token(&host, &s))],
        )
        .await;
        assert_eq!(status(&head), 404, "{authority}: {head}");
    }
    // Case and a trailing dot are the same host, as for HTTP routes.
    let (head, mut tcp) = connect(
        &p,
        "SSH.Test.:22",
        &[("proxy-authorization", &token("ssh.test", &s))],
    )
    .await;
    assert_eq!(status(&head), 200, "{head}");
    assert!(echoes(&mut tcp).await);
    // An HTTP request for the TCP route's host and port finds no route.
    let cookie = cookie_of(None, "ssh.test", &s);
    let r = get(p.addr(), "ssh.test:22", "/", &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 404);
    assert_eq!(t.seen().0, 1);
}

#[tokio::test]
async fn malformed_connects_are_refused_without_reaching_the_target() {
    let t = Target::start().await;
    let p = proxy(&t).await;
    let tok = token("ssh.test", &session(now() + 600, alice()));
    let auth = format!("Proxy-Authorization: {tok}\r\n");
    for (req, want) in [
        // Host differs from the target.
        (format!("CONNECT ssh.test:22 HTTP/1.1\r\nHost: app.test\r\n{auth}\r\n"), "400"),
        // No port; a path; an absolute URI; userinfo.
        (format!("CONNECT ssh.test HTTP/1.1\r\nHost: ssh.test\r\n{auth}\r\n"), "400"),
        (format!("CONNECT ssh.test:22/x HTTP/1.1\r\nHost: ssh.test:22\r\n{auth}\r\n"), "400"),
        (format!("CONNECT http://ssh.test:22/ HTTP/1.1\r\nHost: ssh.test:22\r\n{auth}\r\n"), "400"),
        (format!("CONNECT a@ssh.test:22 HTTP/1.1\r\nHost: a@ssh.test:22\r\n{auth}\r\n"), "400"),
        // HTTP/1.0.
        (format!("CONNECT ssh.test:22 HTTP/1.0\r\nHost: ssh.test:22\r\n{auth}\r\n"), "400"),
        // Two Host headers.
        (format!("CONNECT ssh.test:22 HTTP/1.1\r\nHost: ssh.test:22\r\nHost: ssh.test:22\r\n{auth}\r\n"), "400"),
    ] {
        let got = raw(p.addr(), req.as_bytes(), Duration::from_millis(500)).await;
        let code = got.split(' ').nth(1).unwrap_or("");
        assert_eq!(code, want, "{req:?} → {got}");
    }
    assert_eq!(t.seen().0, 0);
}

#[tokio::test]
async fn signing_out_ends_the_sessions_open_tunnels_and_its_token() {
    let t = Target::start().await;
    let p = proxy(&t).await;
    let s = session(now() + 600, alice());
    let other = session(now() + 600, alice());
    let (head, mut mine) = tunnel_as(&p, &s).await;
    assert_eq!(status(&head), 200);
    let (head, mut theirs) = tunnel_as(&p, &other).await;
    assert_eq!(status(&head), 200);
    assert!(echoes(&mut mine).await && echoes(&mut theirs).await);
    // Signing out in the browser (the cookie of the same session).
    let r = get(
        p.addr(),
        "ssh.test",
        "/.portcullis/sign_out",
        &[("cookie", &cookie_of(None, "ssh.test", &s))],
    )
    .await;
    assert_eq!(r.status, 302);
    assert!(
        closed(&mut mine, Duration::from_secs(3)).await,
        "the tunnel stays open after sign-out"
    );
    assert!(!closed(&mut theirs, Duration::from_millis(300)).await);
    theirs.write_all(b"pong").await.unwrap();
    assert_eq!(read_n(&mut theirs, 4).await, b"pong");
    let (head, _) = tunnel_as(&p, &s).await;
    assert_eq!(
        status(&head),
        407,
        "the signed-out token is refused: {head}"
    );
}

#[tokio::test]
async fn a_reload_that_refuses_the_user_closes_the_tunnel_and_one_that_keeps_them_does_not() {
    let t = Target::start().await;
    let p = proxy(&t).await;
    let s = session(now() + 600, alice());
    let (head, mut tcp) = tunnel_as(&p, &s).await;
    assert_eq!(status(&head), 200);
    assert!(echoes(&mut tcp).await);
    // Same policy in other words: kept.
    std::fs::write(&p.config, config(&t, "allowed_users: [alice@example.com]")).unwrap();
    assert!(portcullis::server::reload::reload(&p.handle, &p.config));
    assert!(!closed(&mut tcp, Duration::from_millis(300)).await);
    tcp.write_all(b"more").await.unwrap();
    assert_eq!(read_n(&mut tcp, 4).await, b"more");
    // alice is no longer allowed: closed.
    std::fs::write(&p.config, config(&t, "allowed_users: [carol@example.com]")).unwrap();
    assert!(portcullis::server::reload::reload(&p.handle, &p.config));
    assert!(
        closed(&mut tcp, Duration::from_secs(3)).await,
        "the tunnel stays open after the reload"
    );
}

/// The CLI sign-in page's confirmation, posted as the browser would from `site`; `host` is
/// the page's host.
async fn post_cli(p: &Proxy, host: &str, page: &str, cookie: &str, site: &str) -> Reply {
    post_cli_as(
        p,
        host,
        page,
        cookie,
        &[
            ("sec-fetch-site", site),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
            ("sec-fetch-user", "?1"),
        ],
    )
    .await
}

async fn post_cli_as(
    p: &Proxy,
    host: &str,
    page: &str,
    cookie: &str,
    fetch: &[(&str, &str)],
) -> Reply {
    let mut req = http::Request::post(page)
        .header("host", host)
        .header("cookie", cookie);
    for (k, v) in fetch {
        req = req.header(*k, *v);
    }
    send(
        p.addr(),
        req.body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await
}

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

#[tokio::test]
async fn the_cli_sign_in_hands_a_code_over_only_when_the_user_confirms_here_and_only_its_verifier_redeems_it(
) {
    let t = Target::start().await;
    let p = proxy(&t).await;
    let s = session(now() + 600, alice());
    let cookie = cookie_of(None, "ssh.test", &s);
    let state = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let challenge = portcullis::auth::session::pkce_challenge(VERIFIER);
    let page = format!("/.portcullis/cli?port=40123&state={state}&challenge={challenge}");
    // The confirmation page, with a form that posts back here and a CSP that lets its answer
    // go on to the loopback port and nowhere else.
    let r = get(p.addr(), "ssh.test", &page, &[("cookie", &cookie)]).await;
    assert_eq!(r.status, 200);
    let html = r.text();
    assert!(
        html.contains("alice@example.com")
            && html.contains("method=\"post\"")
            && html.contains("port 40123"),
        "{html}"
    );
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("form-action 'self' http://127.0.0.1:40123;"),
        "{csp}"
    );
    // Posted from another site: the confirmation again, no code.
    let r = post_cli(&p, "ssh.test", &page, &cookie, "cross-site").await;
    assert_eq!(r.status, 200);
    assert!(
        !r.headers.contains_key("location") && !r.text().contains("code="),
        "{}",
        r.text()
    );
    // A script on this origin posting it (fetch: not a navigation, or no user action): the
    // confirmation again.
    for fetch in [
        &[
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "cors"),
            ("sec-fetch-dest", "empty"),
        ][..],
        &[
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "document"),
        ][..],
        &[
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-dest", "iframe"),
            ("sec-fetch-user", "?1"),
        ][..],
    ] {
        let r = post_cli_as(&p, "ssh.test", &page, &cookie, fetch).await;
        assert_eq!(r.status, 200, "{fetch:?}");
        assert!(!r.headers.contains_key("location"), "{fetch:?}");
    }
    // Posted from this page by the user: a redirect (no page a script could read) to the
    // loopback listener with the state and a code.
    let r = post_cli(&p, "ssh.test", &page, &cookie, "same-origin").await;
    assert_eq!(r.status, 303);
    assert!(
        !r.text().contains("code"),
        "the code is only in the Location"
    );
    let to = url::Url::parse(r.headers["location"].to_str().unwrap()).unwrap();
    assert_eq!((to.host_str(), to.port()), (Some("127.0.0.1"), Some(40123)));
    let q: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(q["state"], state);
    let code = &q["code"];
    // The code alone, as a token, or with another verifier: nothing.
    for auth in [
        format!("Portcullis {code}"),
        format!("Portcullis-Code {code}"),
        format!("Portcullis-Code {code} {}", VERIFIER.replace('d', "e")),
        format!("Portcullis-Code {code} {challenge}"),
    ] {
        let (head, _) = connect(&p, "ssh.test:22", &[("proxy-authorization", &auth)]).await;
        assert_eq!(status(&head), 407, "{auth}: {head}");
    }
    // With its verifier: a tunnel, and a token to keep, which opens the next one.
    let (head, mut tcp) = connect(
        &p,
        "ssh.test:22",
        &[(
            "proxy-authorization",
            &format!("Portcullis-Code {code} {VERIFIER}"),
        )],
    )
    .await;
    assert_eq!(status(&head), 200, "{head}");
    assert!(echoes(&mut tcp).await);
    let kept = kept(&head);
    let (head, mut tcp) = connect(
        &p,
        "ssh.test:22",
        &[("proxy-authorization", &format!("Portcullis {kept}"))],
    )
    .await;
    assert_eq!(status(&head), 200, "{head}");
    assert!(echoes(&mut tcp).await);
    // Without port, state or challenge, or with a privileged port or a bad state: refused.
    for bad in [
        "/.portcullis/cli".to_string(),
        format!("/.portcullis/cli?port=40123&state={state}"),
        format!("/.portcullis/cli?port=22&state={state}&challenge={challenge}"),
        format!("/.portcullis/cli?port=40123&state=short&challenge={challenge}"),
        format!("/.portcullis/cli?port=40123&state={state}%22%3E&challenge={challenge}"),
        format!("/.portcullis/cli?port=40123&state={state}&challenge={challenge}x"),
    ] {
        let r = get(p.addr(), "ssh.test", &bad, &[("cookie", &cookie)]).await;
        assert_eq!(r.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn with_a_cookie_domain_a_cli_session_opens_only_for_the_host_that_issued_it() {
    let t = Target::start().await;
    let p = Proxy::start(&format!(
        "address: 127.0.0.1:0\ninsecure_server: true\ncookie_secret: {SECRET}\ncookie_domain: corp.test\n\
         routes:\n  - from: tcp+https://ssh.corp.test:22\n    to: tcp://127.0.0.1:{}\n    allowed_domains: [example.com]\n\
         \x20 - from: http://app.corp.test\n    to: http://127.0.0.1:9\n    allow_any_authenticated_user: true\n",
        t.port
    ))
    .await;
    let s = session(now() + 600, alice());
    // The browser's session opens on every host under the domain, the CLI's only on its own.
    let cookie = cookie_of(Some("corp.test"), "corp.test", &s);
    let challenge = portcullis::auth::session::pkce_challenge(VERIFIER);
    let page = format!(
        "/.portcullis/cli?port=40123&state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&challenge={challenge}"
    );
    let code_from = |r: Reply| {
        let to = url::Url::parse(r.headers["location"].to_str().unwrap()).unwrap();
        to.query_pairs()
            .find(|(k, _)| k == "code")
            .unwrap()
            .1
            .into_owned()
    };
    // A code got on the application's host (say, by a script there) opens no TCP route.
    let r = post_cli(&p, "app.corp.test", &page, &cookie, "same-origin").await;
    assert_eq!(r.status, 303);
    let elsewhere = code_from(r);
    let (head, _) = connect(
        &p,
        "ssh.corp.test:22",
        &[(
            "proxy-authorization",
            &format!("Portcullis-Code {elsewhere} {VERIFIER}"),
        )],
    )
    .await;
    assert_eq!(status(&head), 407, "{head}");
    let (head, _) = connect(
        &p,
        "ssh.corp.test:22",
        &[("proxy-authorization", &token("corp.test", &s))],
    )
    .await;
    assert_eq!(status(&head), 407, "a token sealed for the domain: {head}");
    assert_eq!(t.seen().0, 0);
    // Got on the TCP route's own host, it does.
    let r = post_cli(&p, "ssh.corp.test", &page, &cookie, "same-origin").await;
    let here = code_from(r);
    let auth = format!("Portcullis-Code {here} {VERIFIER}");
    let (head, mut tcp) = connect(&p, "ssh.corp.test:22", &[("proxy-authorization", &auth)]).await;
    assert_eq!(status(&head), 200, "{head}");
    assert!(echoes(&mut tcp).await);
    // The session it gives to keep opens this host's route: sealed for this host alone.
    let kept = kept(&head);
    let auth = format!("Portcullis {kept}");
    let (head, mut tcp) = connect(&p, "ssh.corp.test:22", &[("proxy-authorization", &auth)]).await;
    assert_eq!(status(&head), 200, "the kept session: {head}");
    assert!(echoes(&mut tcp).await);
}

#[test]
fn tcp_routes_take_only_what_a_tunnel_uses() {
    let load = |route: &str| {
        portcullis::config::load_str(
            &format!("insecure_server: true\nroutes:\n  - {route}\n    allow_any_authenticated_user: true\n"),
            "c.yaml",
            std::path::Path::new("."),
            &portcullis::config::MapEnv::default(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    assert_eq!(
        load("from: tcp+https://ssh.test:22\n    to: tcp://openclaw-gateway:22"),
        Ok(())
    );
    for (route, says) in [
        (
            "from: tcp+https://ssh.test\n    to: tcp://g:22",
            "names the port",
        ),
        (
            "from: tcp+https://ssh.test:22\n    to: http://g:22",
            "tcp://host:port",
        ),
        (
            "from: tcp+https://ssh.test:22\n    to: tcp://g",
            "needs a host and a port",
        ),
        (
            "from: tcp+https://ssh.test:22\n    to: tcp://g:22/x",
            "only a host and a port",
        ),
        (
            "from: tcp+https://ssh.test:22/x\n    to: tcp://g:22",
            "only scheme, host and port",
        ),
        (
            "from: tcp+https://ssh.test:22\n    to: tcp://g:22\n    prefix: /a",
            "`prefix` is for HTTP routes",
        ),
        (
            "from: tcp+https://ssh.test:22\n    to: tcp://g:22\n    allow_websockets: true",
            "`allow_websockets` is for HTTP routes",
        ),
        ("from: https://app.test\n    to: tcp://g:22", "http"),
        (
            "from: tcp+https://ssh.test:22\n    to: tcp://g:22\n    timeout: 5s",
            "`timeout` is for HTTP routes",
        ),
        (
            "from: tcp+https://ssh.test:0\n    to: tcp://g:22",
            "names the port",
        ),
        (
            "from: tcp+https://ssh.test:22\n    to: tcp://g:0",
            "needs a host and a port",
        ),
    ] {
        let e = load(route).expect_err(route);
        assert!(e.contains(says) && e.contains("c.yaml:"), "{route}: {e}");
    }
}

#[tokio::test]
async fn a_shadow_policy_is_decided_for_tunnels_too_and_never_enforced() {
    let t = Target::start().await;
    let p = Proxy::start(&config(
        &t,
        "allowed_domains: [example.com]\n    shadow_policy:\n      - allow:\n          or:\n            - groups: { has: admins }",
    ))
    .await;
    let s = session(now() + 600, alice());
    let (head, mut tcp) = tunnel_as(&p, &s).await;
    assert_eq!(
        status(&head),
        200,
        "the shadow's refusal is not enforced: {head}"
    );
    assert!(echoes(&mut tcp).await);
    let m = p.handle.shared.metrics.render();
    let line = "portcullis_shadow_policy_disagreements_total{route=\"tcp+https://ssh.test:22\",enforced=\"allow\",shadow=\"deny\"}";
    assert_eq!(metric(&m, line), Some(1.0), "{m}");
}

#[tokio::test]
async fn open_tunnels_stay_counted_under_the_connection_caps() {
    let t = Target::start().await;
    let p = Proxy::start(&format!(
        "max_connections_per_ip: 2\n{}",
        config(&t, "allowed_domains: [example.com]")
    ))
    .await;
    let tok = token("ssh.test", &session(now() + 600, alice()));
    let (h1, mut a) = connect(&p, "ssh.test:22", &[("proxy-authorization", &tok)]).await;
    let (h2, mut b) = connect(&p, "ssh.test:22", &[("proxy-authorization", &tok)]).await;
    assert_eq!((status(&h1), status(&h2)), (200, 200));
    assert!(echoes(&mut a).await && echoes(&mut b).await);
    // A third connection from this address is over the cap while both tunnels are open.
    let (h3, _) = connect(&p, "ssh.test:22", &[("proxy-authorization", &tok)]).await;
    assert_eq!(status(&h3), 0, "a third connection was served: {h3}");
    // One tunnel closed: its place is free again.
    drop(a);
    let mut served = false;
    for _ in 0..50 {
        let (h, mut c) = connect(&p, "ssh.test:22", &[("proxy-authorization", &tok)]).await;
        if status(&h) == 200 {
            served = echoes(&mut c).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the closed tunnel's place was not given back");
    assert!(!closed(&mut b, Duration::from_millis(100)).await);
}
