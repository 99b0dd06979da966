//! Test harness: the real Portcullis server on port 0, a Rust HTTP + WebSocket echo upstream,
//! and clients (plain, TLS, raw bytes).
#![allow(dead_code)]

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

pub use portcullis::config::MapEnv;

mod echo;
pub mod redis;
#[allow(unused_imports)]
pub use echo::{Echo, Seen};

pub mod scripted;
pub use scripted::{ok, Got, Scripted};

/// A running Portcullis built from YAML text.
pub struct Proxy {
    pub handle: portcullis::server::Handle,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Proxy {
    pub async fn start(yaml: &str) -> Proxy {
        Proxy::start_env(yaml, MapEnv::default()).await
    }

    pub async fn start_env(yaml: &str, env: MapEnv) -> Proxy {
        init();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let rt = portcullis::runtime::Runtime::load(&config, &env)
            .unwrap_or_else(|e| panic!("config refused:\n{e}"));
        let handle = portcullis::server::start(rt).await.unwrap();
        Proxy {
            handle,
            dir,
            config,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    pub fn port(&self) -> u16 {
        self.handle.addr.port()
    }
}

pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// An address where nothing listens, reserved while the returned socket lives (bound, not
/// listening: a connection there is refused, and no other process can take the port).
pub fn refusing_addr() -> (socket2::Socket, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (s, addr)
}

/// The value of the first Prometheus sample whose line starts with `line_prefix` (a name, or
/// a name and its labels), parsed: `…_total 1` is 1, not also 10 to 19.
pub fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    let line_prefix = line_prefix.trim_end();
    text.lines()
        .find(|l| {
            l.strip_prefix(line_prefix)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits (5 s at most) until the proxy's gauge `name` reads `want`.
pub async fn until_metric(p: &Proxy, name: &str, want: f64) {
    let start = std::time::Instant::now();
    loop {
        let m = p.handle.shared.metrics.render();
        if metric(&m, name) == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{name} is not {want}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A port on 127.0.0.1 kept for a server that starts later (another process, or one whose
/// address must be written into a config first): the returned socket holds it, bound with
/// `SO_REUSEADDR` and not listening, so nothing else is given the port, while a server that
/// binds it with `SO_REUSEADDR` (Rust's std, tokio, Go) still can. Keep the socket as long as
/// the port is in use; until something listens there, a connection to it is refused.
pub fn reserve_port() -> (socket2::Socket, u16) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    (s, port)
}

/// A plain HTTP/1.1 response, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// Reads a response whole; a body that ends in an error (cut off, malformed) fails the
    /// test, so that "does not contain" never passes on a truncated body.
    pub async fn read(resp: http::Response<hyper::body::Incoming>) -> Reply {
        let status = resp.status();
        Reply::try_read(resp)
            .await
            .unwrap_or_else(|e| panic!("the {status} response's body ended in an error: {e}"))
    }

    /// Reads a response whole, or says why its body could not be read to its end.
    pub async fn try_read(
        resp: http::Response<hyper::body::Incoming>,
    ) -> Result<Reply, hyper::Error> {
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub fn seen(&self) -> Seen {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an echo body ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A new plain HTTP/1.1 client connection to `addr` (its driver spawned): for several
/// requests on one connection, or a request body of any kind.
pub async fn h1_connect<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    s
}

/// Sends one request over a new plain connection to `addr`.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let resp = h1_connect(addr).await.send_request(req).await.unwrap();
    Reply::read(resp).await
}

/// GET `path` with `Host: host` (plus extra headers) over plain HTTP.
pub async fn get(addr: SocketAddr, host: &str, path: &str, extra: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(path).header("host", host);
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    send(addr, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// Writes raw bytes, then reads until the peer closes or `wait` passes; returns what came back.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    read_to_close(&mut tcp, wait).await
}

/// Writes raw bytes, then reads until the peer closes (or resets) the connection: `None` when
/// it neither closed nor stopped within `wait`.
pub async fn raw_until_closed(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // The peer may close before it has read everything (an oversized head): that is a close.
    let _ = tcp.write_all(bytes).await;
    let mut out = Vec::new();
    tokio::time::timeout(wait, async {
        let mut buf = [0u8; 8192];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// What arrives on `tcp` until the other side closes it (or `wait` passes), as text.
pub async fn read_to_close(tcp: &mut TcpStream, wait: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 8192];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A rustls client config that accepts any certificate (the tests check certificates
/// separately where that is the point).
pub fn tls_client_any(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(portcullis::upstream::NoVerify(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// Opens a TLS connection with the given SNI; returns the stream and the served leaf cert.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(tls_client_any(alpn))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// One HTTP/1.1 request over TLS with SNI `sni` and Host `host`.
pub async fn tls_get(addr: SocketAddr, sni: &str, host: &str, path: &str) -> Reply {
    let s = tls_connect(addr, sni, &[b"http/1.1"]).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    Reply::read(resp).await
}

/// One HTTP/2 request over TLS (ALPN h2).
pub async fn h2_get(addr: SocketAddr, host: &str, path: &str) -> (http::Version, Reply) {
    h2_get_as(addr, host, host, path).await
}

/// An HTTP/2 GET over TLS with SNI `sni` and `:authority` `authority`.
pub async fn h2_get_as(
    addr: SocketAddr,
    sni: &str,
    authority: &str,
    path: &str,
) -> (http::Version, Reply) {
    let host = authority;
    let s = tls_connect(addr, sni, &[b"h2"]).await;
    assert_eq!(
        s.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN did not pick h2"
    );
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let uri = format!("https://{host}:{}{path}", addr.port());
    let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    let resp = send.send_request(req).await.unwrap();
    let version = resp.version();
    (version, Reply::read(resp).await)
}

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Opens a WebSocket over plain HTTP with the given Host and headers (Origin...).
pub async fn ws_connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> Result<Ws, u16> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut b = Request::get(format!("ws://{host}{path}"))
        .header("host", host)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        );
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    match tokio_tungstenite::client_async(b.body(()).unwrap(), tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("websocket handshake failed oddly: {e}"),
    }
}

/// Sends a text message and waits (bounded) for the echo.
pub async fn ws_roundtrip(ws: &mut Ws, text: &str) -> Option<String> {
    ws.send(Message::text(text)).await.ok()?;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => Some(t.to_string()),
        _ => None,
    }
}

/// Self-signed certificate + key PEM files for `names`, written into `dir`; returns paths.
pub fn cert_files(dir: &std::path::Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, String) {
    let ck =
        rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert, key, ck.cert.pem())
}

/// Parses `name=value` query-less header pairs into a map (for compact assertions).
pub fn header_map(pairs: &[(String, String)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
