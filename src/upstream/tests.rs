//! The upstream client on its own, against an upstream that answers with exact bytes: when a
//! connection goes back to the pool and when it must not, and how the request writer frames a
//! body.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{send, Destination, Fields, UpBody, Upstream, UpstreamClient, UpstreamTls};
use crate::policy::eval::Permitted;
use crate::policy::{authorize, Facts};

/// One request as the upstream read it: the connection it came on (numbered from 0), its
/// head, and its body as sent (chunked bodies left as they came).
#[derive(Clone, Debug)]
struct Got {
    conn: usize,
    head: String,
    body: Vec<u8>,
}

/// An upstream that answers each request with `answer(head)`.
struct Up {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Up {
    async fn start(answer: fn(&str) -> Vec<u8>) -> Up {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let all = got.clone();
        tokio::spawn(async move {
            for conn in 0.. {
                let Ok((s, _)) = l.accept().await else { return };
                let all = all.clone();
                tokio::spawn(serve(s, conn, all, answer));
            }
        });
        Up { addr, got }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn upstream(&self) -> Upstream {
        Upstream::from_url(&format!("http://{}", self.addr).parse().unwrap()).unwrap()
    }
}

async fn serve(
    mut s: TcpStream,
    conn: usize,
    all: Arc<Mutex<Vec<Got>>>,
    answer: fn(&str) -> Vec<u8>,
) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end);
        let body_end = |b: &[u8]| -> Option<usize> {
            if let Some(l) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
            {
                let n: usize = l.trim().parse().ok()?;
                return (b.len() >= n).then_some(n);
            }
            if head.contains("transfer-encoding: chunked") {
                return b.windows(5).position(|w| w == b"0\r\n\r\n").map(|i| i + 5);
            }
            Some(0)
        };
        let take = loop {
            if let Some(n) = body_end(&buf) {
                break n;
            }
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let body = buf.drain(..take).collect();
        let reply = answer(&head);
        // A response framed by the end of its connection, or that says it closes, does.
        let close = head.starts_with("get /until-close ") || head.starts_with("get /close ");
        all.lock().unwrap().push(Got { conn, head, body });
        if s.write_all(&reply).await.is_err() || close {
            return;
        }
    }
}

/// The headers the proxy would pass: none but what a test gives.
struct Plain(HeaderMap, HeaderValue);

impl Fields for Plain {
    fn fields(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.0.iter()
    }
    fn client_host(&self) -> &HeaderValue {
        &self.1
    }
    fn websocket(&self) -> bool {
        false
    }
    fn to_map(&self, _: &HeaderValue) -> HeaderMap {
        self.0.clone()
    }
}

/// A decision that lets the request through (only the policy code can make one).
fn permitted() -> Permitted {
    let policy = crate::config::first_policy(
        "insecure_server: true\nroutes:\n  - from: http://a\n    to: http://b\n    allow_public_unauthenticated_access: true\n",
    );
    let facts = Facts {
        method: &http::Method::GET,
        path: "/",
        ip: None,
    };
    authorize(&policy, None, &facts).unwrap()
}

fn client() -> UpstreamClient {
    UpstreamClient::new(&UpstreamTls {
        custom_ca: None,
        server_name: None,
        skip_verify: false,
    })
    .unwrap()
}

/// Sends `method path` with `body`; returns the status and the whole body, or `None` when the
/// body ended in an error.
async fn fetch(
    c: &UpstreamClient,
    up: &Upstream,
    method: &str,
    path: &str,
    body: UpBody,
) -> (StatusCode, Option<Bytes>) {
    let (parts, ()) = Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap()
        .into_parts();
    let to = Destination {
        client: c,
        upstreams: std::iter::once(up),
        preserve_host: false,
        timeout: None,
        name: "test",
    };
    let fields = Plain(HeaderMap::new(), HeaderValue::from_static("a"));
    let resp = send(to, &permitted(), parts, &fields, path.into(), body)
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.ok().map(|c| c.to_bytes());
    (status, body)
}

fn answer(head: &str) -> Vec<u8> {
    let path = head.split(' ').nth(1).unwrap_or("");
    match path {
        "/close" => b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        "/http10" => b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        "/extra" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA".to_vec(),
        "/chunked" => {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nT: 1\r\n\r\n"
                .to_vec()
        }
        "/until-close" => b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec(),
        "/big" => {
            let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
            r.extend(std::iter::repeat_n(b'x', 100_000));
            r
        }
        p => format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{p}", p.len()).into_bytes(),
    }
}

#[tokio::test]
async fn a_connection_goes_back_to_the_pool_only_after_a_clean_end() {
    let up = Up::start(answer).await;
    let target = up.upstream();
    let c = client();
    // Each case, then a plain request: on the same connection when the case's connection was
    // pooled, on a new one when it must not have been.
    let cases = [
        ("/a", true),
        ("/chunked", true),
        ("/close", false),
        ("/http10", false),
        ("/extra", false),
        ("/until-close", false),
    ];
    for (path, pooled) in cases {
        let (status, body) = fetch(&c, &target, "GET", path, UpBody::empty()).await;
        assert_eq!(status, 200, "{path}");
        assert!(body.is_some_and(|b| !b.is_empty()), "{path}");
        let after = format!("/after{path}");
        let (_, body) = fetch(&c, &target, "GET", &after, UpBody::empty()).await;
        assert_eq!(body.as_deref(), Some(after.as_bytes()));
        let got = up.got();
        let conn_of = |p: &str| {
            got.iter()
                .find(|g| g.head.contains(&format!(" {p} ")))
                .unwrap()
                .conn
        };
        assert_eq!(
            conn_of(path) == conn_of(&after),
            pooled,
            "{path}: pooled {pooled}"
        );
    }
}

#[tokio::test]
async fn a_response_dropped_before_its_end_does_not_return_its_connection() {
    let up = Up::start(answer).await;
    let target = up.upstream();
    let c = client();
    let (parts, ()) = Request::get("/big").body(()).unwrap().into_parts();
    let to = Destination {
        client: &c,
        upstreams: std::iter::once(&target),
        preserve_host: false,
        timeout: None,
        name: "test",
    };
    let fields = Plain(HeaderMap::new(), HeaderValue::from_static("a"));
    let resp = send(
        to,
        &permitted(),
        parts,
        &fields,
        "/big".into(),
        UpBody::empty(),
    )
    .await
    .unwrap();
    let mut body = resp.into_body();
    // One frame of 100 KB, then the client goes away.
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| d.len() < 100_000));
    drop(body);
    let (_, b) = fetch(&c, &target, "GET", "/next", UpBody::empty()).await;
    assert_eq!(b.as_deref(), Some(&b"/next"[..]));
    let got = up.got();
    assert_ne!(
        got[0].conn, got[1].conn,
        "a half-read connection was reused"
    );
}

#[tokio::test]
async fn the_writer_frames_the_body_it_sends() {
    // The client's body as hyper gives it to the proxy: a small server in front that sends
    // each request it gets upstream.
    let up = Up::start(answer).await;
    let target = Arc::new(up.upstream());
    let c = Arc::new(client());
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = front.accept().await else {
                return;
            };
            let (c, target) = (c.clone(), target.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (c, target) = (c.clone(), target.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let path = parts.uri.path().to_string();
                        let method = parts.method.to_string();
                        let (status, _) =
                            fetch(&c, &target, &method, &path, UpBody::new(body)).await;
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(http_body_util::Empty::<Bytes>::new())
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let tcp = TcpStream::connect(front_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>,
    >(hyper_util::rt::TokioIo::new(tcp))
    .await
    .unwrap();
    tokio::spawn(conn);
    let known = http_body_util::Full::new(Bytes::from_static(b"hello")).boxed();
    let streamed = http_body_util::StreamBody::new(futures_util::stream::iter([
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(b"he"))),
        Ok(hyper::body::Frame::data(Bytes::from_static(b"llo"))),
    ]))
    .boxed();
    let empty = http_body_util::Empty::new().boxed();
    for (path, body) in [
        ("/known", known),
        ("/streamed", streamed),
        ("/empty", empty),
    ] {
        let method = if path == "/empty" { "GET" } else { "POST" };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "front")
            .body(body)
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let got = up.got();
    let of = |p: &str| {
        got.iter()
            .find(|g| g.head.contains(&format!(" {p} ")))
            .unwrap()
            .clone()
    };
    let known = of("/known");
    assert!(
        known.head.contains("\r\ncontent-length: 5\r\n"),
        "{}",
        known.head
    );
    assert!(!known.head.contains("transfer-encoding"), "{}", known.head);
    assert_eq!(known.body, b"hello");
    let streamed = of("/streamed");
    assert!(
        streamed.head.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{}",
        streamed.head
    );
    assert!(
        !streamed.head.contains("content-length"),
        "{}",
        streamed.head
    );
    assert_eq!(streamed.body, b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n");
    let empty = of("/empty");
    assert!(
        !empty.head.contains("content-length") && !empty.head.contains("transfer-encoding"),
        "{}",
        empty.head
    );
    assert!(
        empty.head.starts_with("get /empty http/1.1\r\nhost: "),
        "{}",
        empty.head
    );
}
