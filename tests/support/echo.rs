//! A Rust HTTP + WebSocket echo upstream, for the tests (and, through `examples/echo.rs`, the
//! end-to-end suite, the demo and the benchmarks).
//!
//! Every HTTP request is answered with a
//! JSON description of what arrived (method, target, headers, body length); a WebSocket
//! upgrade is accepted and every message echoed. `/slow/N` waits N ms; `/stream` sends one
//! chunk, waits 1.5 s, sends another; `/tiny` answers a fixed 100-byte body (benchmarks);
//! `/set-cookie?v=A&v=B` adds each `v` as a `Set-Cookie` header.
#![allow(dead_code)]

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;

/// What the echo upstream saw, returned as the JSON body of every plain request.
#[derive(Debug, serde::Deserialize)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    pub upstream: String,
    /// The connection's client address (Portcullis's side of the upstream connection).
    pub peer: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A running echo upstream.
pub struct Echo {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub name: String,
}

impl Echo {
    pub async fn start(name: &str) -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Echo::serve(l, name, None).await
    }

    pub async fn start_tls(name: &str, cfg: Arc<rustls::ServerConfig>) -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Echo::serve(l, name, Some(cfg)).await
    }

    pub async fn serve(l: TcpListener, name: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Echo {
        let addr = l.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let n = name.to_string();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = l.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let h = h.clone();
                let n = n.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc =
                        service_fn(move |req| echo(req, h.clone(), n.clone(), peer.to_string()));
                    let b = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(a) => {
                            if let Ok(s) = a.accept(tcp).await {
                                let _ = b
                                    .serve_connection(TokioIo::new(s), svc)
                                    .with_upgrades()
                                    .await;
                            }
                        }
                        None => {
                            let _ = b
                                .serve_connection(TokioIo::new(tcp), svc)
                                .with_upgrades()
                                .await;
                        }
                    }
                });
            }
        });
        Echo {
            addr,
            hits,
            name: name.to_string(),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> EchoBody {
    Full::new(b.into()).boxed()
}

async fn echo(
    mut req: Request<Incoming>,
    hits: Arc<AtomicUsize>,
    name: String,
    peer: String,
) -> Result<Response<EchoBody>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if path == "/tiny" {
        return Ok(Response::new(full(Bytes::from_static(&[b'x'; 100]))));
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(r);
        };
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(up),
                    Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        if ws.send(m).await.is_err() {
                            break;
                        }
                    } else if m.is_close() {
                        break;
                    }
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert("upgrade", http::HeaderValue::from_static("websocket"));
        h.insert("connection", http::HeaderValue::from_static("Upgrade"));
        h.insert("sec-websocket-accept", accept.parse().expect("accept key"));
        h.insert(
            "x-echo-name",
            name.parse()
                .unwrap_or(http::HeaderValue::from_static("echo")),
        );
        return Ok(r);
    }
    if path == "/stream" {
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(2);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(hyper::body::Frame::data(Bytes::from_static(b"first;"))))
                .await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let _ = tx
                .send(Ok(hyper::body::Frame::data(Bytes::from_static(b"second"))))
                .await;
        });
        let body =
            http_body_util::StreamBody::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let mut r = Response::new(BodyExt::boxed(body));
        r.headers_mut().insert(
            "x-echo-name",
            name.parse()
                .unwrap_or(http::HeaderValue::from_static("echo")),
        );
        return Ok(r);
    }
    let set_cookies: Vec<String> = if path == "/set-cookie" {
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .filter(|(k, _)| k == "v")
            .map(|(_, v)| v.into_owned())
            .collect()
    } else {
        Vec::new()
    };
    let method = req.method().to_string();
    let target = req.uri().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "method": method, "target": target, "headers": headers, "body_len": body.len(), "upstream": name, "peer": peer,
    });
    let mut r = Response::new(full(json.to_string()));
    let h = r.headers_mut();
    h.insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(
        "x-echo-name",
        name.parse()
            .unwrap_or(http::HeaderValue::from_static("echo")),
    );
    h.insert(
        "connection",
        http::HeaderValue::from_static("x-upstream-hop"),
    );
    h.insert("x-upstream-hop", http::HeaderValue::from_static("1"));
    h.insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
    for c in set_cookies {
        if let Ok(v) = http::HeaderValue::from_str(&c) {
            h.append("set-cookie", v);
        }
    }
    Ok(r)
}
