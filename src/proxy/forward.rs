//! The upstream side: pooled keep-alive connections (HTTP/1.1, plain or TLS) that each request
//! drives itself, round-robin
//! over a route's `to` URLs with fail-over on refused connections, timeouts → 502/504.

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::Instant;
use tokio::net::TcpStream;
use tower_service::Service;

use super::error::ProxyError;
use crate::policy::eval::Permitted;
use crate::route::{Route, Upstream};
use crate::server::workers::PerWorker;

/// TLS settings for a route's https upstreams.
pub struct UpstreamTls {
    pub custom_ca: Option<RootCertStore>,
    pub server_name: Option<ServerName<'static>>,
    pub skip_verify: bool,
}

/// The default trust: the system's roots plus Mozilla's (so a scratch image still verifies).
fn default_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let native = rustls_native_certs::load_native_certs();
            for c in native.certs {
                let _ = store.add(c);
            }
            Arc::new(store)
        })
        .clone()
}

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
/// Boxed once when connected: the pool, the request and the response body then move a
/// pointer instead of the connection's state and buffers (~1.8 KB) on every request.
type Conn = Box<http1::Connection<Io, UpBody>>;

/// Keep-alive connections waiting for their next request, by upstream — one set per
/// connection worker (`server::workers`). A connection is registered with the I/O driver of
/// the worker that opened it; reused from another worker, each of its wake-ups would cross
/// threads and wait until the first worker next polls its driver. So a worker reuses only
/// the connections it opened.
#[derive(Default)]
struct Pool {
    idle: PerWorker<Mutex<HashMap<Arc<str>, Vec<Idle>>>>,
}

struct Idle {
    sender: http1::SendRequest<UpBody>,
    conn: Conn,
    since: Instant,
}

/// An idle connection older than this is closed rather than reused.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// Idle connections kept per upstream and worker.
const IDLE_MAX: usize = 128;

impl Pool {
    fn put(&self, key: Arc<str>, sender: http1::SendRequest<UpBody>, conn: Conn) {
        if let Ok(mut idle) = self.idle.get().lock() {
            let list = idle.entry(key).or_default();
            if list.len() < IDLE_MAX {
                list.push(Idle {
                    sender,
                    conn,
                    since: Instant::now(),
                });
            }
        }
    }

    fn take(&self, key: &str) -> Option<Idle> {
        let mut idle = self.idle.get().lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some(i) = list.pop() {
            if i.since.elapsed() < IDLE_FOR {
                return Some(i);
            }
        }
        None
    }
}

/// A pooled client for one route's upstreams (HTTP/1.1, plain or TLS).
///
/// Unlike a client that runs each connection in a task of its own, a request here drives its
/// upstream connection itself — while waiting for the response headers, then from the response
/// body as the downstream connection reads it — so a proxied request makes no cross-task
/// hand-off (bench/README.md). The connection goes back to the pool when the body has ended.
/// WebSocket upgrades get a fresh connection in a task of its own.
pub struct UpstreamClient {
    connector: HttpsConnector<HttpConnector>,
    pool: Arc<Pool>,
}

impl UpstreamClient {
    pub fn new(tls: &UpstreamTls) -> Result<UpstreamClient, rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let config = if tls.skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth()
        } else {
            let roots = match &tls.custom_ca {
                Some(ca) => Arc::new(ca.clone()),
                None => default_roots(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let b = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http();
        let b = match &tls.server_name {
            Some(n) => b.with_server_name_resolver(FixedServerNameResolver::new(n.clone())),
            None => b,
        };
        let connector = b.enable_http1().wrap_connector(http);
        Ok(UpstreamClient {
            connector,
            pool: Arc::default(),
        })
    }

    async fn connect(&self, up: &Upstream) -> Result<(http1::SendRequest<UpBody>, Conn), Failure> {
        let target = Uri::builder()
            .scheme(up.scheme.clone())
            .authority(up.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| Failure::Connect(e.to_string()))?;
        let io = self
            .connector
            .clone()
            .call(target)
            .await
            .map_err(|e| Failure::Connect(error_chain(&*e)))?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| Failure::Connect(error_chain(&e)))?;
        Ok((sender, Box::new(conn)))
    }

    /// One request on a pooled or new connection; the response's body drives the connection.
    async fn request(
        &self,
        up: &Upstream,
        req: Request<UpBody>,
        upgrade: bool,
        retryable: bool,
    ) -> Result<Response<UpResponseBody>, Failure> {
        if upgrade {
            let (mut sender, conn) = self.connect(up).await?;
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| Failure::Sent(error_chain(&e)))?;
            return Ok(resp.map(|body| UpResponseBody { body, driver: None }));
        }
        let key = &up.pool_key;
        let mut req = req;
        // A pooled connection the upstream has closed meanwhile fails before anything is
        // sent: then the request goes on a new connection.
        while let Some(idle) = self.pool.take(key) {
            let (mut sender, mut conn) = (idle.sender, idle.conn);
            if !ready(&mut sender, &mut conn).await {
                continue;
            }
            match exchange(sender, conn, req).await {
                Ok(done) => return Ok(self.wrap(key, done)),
                Err((Some(back), e)) if retryable => {
                    tracing::debug!(error = %e, "pooled upstream connection was closed; retrying on a new one");
                    req = back;
                }
                Err((_, e)) => return Err(Failure::Sent(e)),
            }
        }
        let (sender, conn) = self.connect(up).await?;
        match exchange(sender, conn, req).await {
            Ok(done) => Ok(self.wrap(key, done)),
            Err((_, e)) => Err(Failure::Sent(e)),
        }
    }

    fn wrap(&self, key: &Arc<str>, done: Exchanged) -> Response<UpResponseBody> {
        let (resp, sender, conn) = done;
        let mut driver = Some(Driver {
            sender,
            conn,
            pool: Arc::downgrade(&self.pool),
            key: key.clone(),
        });
        // A response without a body may never be polled: the connection is free now.
        if resp.body().is_end_stream() {
            if let Some(d) = driver.take() {
                d.give_back();
            }
        }
        resp.map(|body| UpResponseBody { body, driver })
    }
}

enum Failure {
    /// No connection was made: nothing was sent.
    Connect(String),
    /// The request may have reached the upstream.
    Sent(String),
}

type Exchanged = (Response<Incoming>, http1::SendRequest<UpBody>, Conn);

/// Polls the connection until it is ready for a request; false if it has closed.
async fn ready(sender: &mut http1::SendRequest<UpBody>, conn: &mut Conn) -> bool {
    let check = std::future::poll_fn(|cx| {
        if Pin::new(&mut *conn).poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        sender.poll_ready(cx).map(|r| r.is_ok())
    });
    let mut check = std::pin::pin!(check);
    // Usually ready at the first poll: no timer for that.
    match std::future::poll_fn(|cx| Poll::Ready(check.as_mut().poll(cx))).await {
        Poll::Ready(ok) => ok,
        Poll::Pending => tokio::time::timeout(Duration::from_secs(1), check)
            .await
            .unwrap_or(false),
    }
}

/// Sends the request and drives the connection until the response headers arrive. On a
/// failure before the request was sent, the request comes back for another try.
async fn exchange(
    mut sender: http1::SendRequest<UpBody>,
    mut conn: Conn,
    req: Request<UpBody>,
) -> Result<Exchanged, (Option<Request<UpBody>>, String)> {
    let mut fut = std::pin::pin!(sender.try_send_request(req));
    let mut conn_done = false;
    let resp = std::future::poll_fn(|cx| {
        if !conn_done && Pin::new(&mut conn).poll(cx).is_ready() {
            conn_done = true;
        }
        fut.as_mut().poll(cx)
    })
    .await;
    match resp {
        Ok(r) => Ok((r, sender, conn)),
        Err(mut e) => {
            let back = e.take_message();
            Err((back, error_chain(e.error())))
        }
    }
}

/// The upstream response body; while it is read it also drives its connection, which goes
/// back to the pool when the body has ended.
pub struct UpResponseBody {
    body: Incoming,
    driver: Option<Driver>,
}

struct Driver {
    sender: http1::SendRequest<UpBody>,
    conn: Conn,
    pool: std::sync::Weak<Pool>,
    key: Arc<str>,
}

impl Driver {
    fn give_back(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put(self.key, self.sender, self.conn);
        }
    }
}

impl HttpBody for UpResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(d) = &mut this.driver {
            if Pin::new(&mut d.conn).poll(cx).is_ready() {
                // Closed (or `Connection: close`): what it read is in the body already.
                this.driver = None;
            }
        }
        let r = Pin::new(&mut this.body).poll_frame(cx);
        // A reader that knows the length stops at the last byte without asking for the end:
        // the connection is free as soon as the body has ended either way.
        let ended = match &r {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            _ => false,
        };
        if ended {
            if let Some(d) = this.driver.take() {
                d.give_back();
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Sends the request to the route's upstreams: round-robin, and on a refused connection the
/// next one (the body has not been read then). Only a [`Permitted`] request can be sent.
pub async fn send(
    route: &Route,
    _permitted: &Permitted,
    parts: http::request::Parts,
    path_and_query: String,
    body: UpBody,
) -> Result<Response<UpResponseBody>, ProxyError> {
    let upgrade = parts.headers.contains_key(http::header::UPGRADE);
    let attempt = async {
        let mut parts = parts;
        let mut pq = path_and_query;
        let mut order = route.upstream_order().peekable();
        while let Some(up) = order.next() {
            let last = order.peek().is_none();
            // The last candidate takes the path and the parts (leaving empty ones behind);
            // earlier ones get a copy for a fail-over.
            let path: http::uri::PathAndQuery = if up.base_path.is_empty() {
                let this = if last {
                    std::mem::take(&mut pq)
                } else {
                    pq.clone()
                };
                http::uri::PathAndQuery::from_maybe_shared(Bytes::from(this))
            } else {
                format!("{}{}", up.base_path, pq).parse()
            }
            .map_err(|_| ProxyError::BadRequest("the path cannot be forwarded".into()))?;
            let this = if last {
                std::mem::replace(&mut parts, Request::new(()).into_parts().0)
            } else {
                parts.clone()
            };
            let mut req = Request::from_parts(this, body.retry());
            *req.uri_mut() = Uri::from(path);
            *req.version_mut() = http::Version::HTTP_11;
            if !route.preserve_host_header {
                req.headers_mut()
                    .insert(http::header::HOST, up.host_header.clone());
            }
            match route.client.request(up, req, upgrade, body.unread()).await {
                Ok(resp) => return Ok(resp),
                Err(Failure::Connect(e)) => {
                    tracing::warn!(route = %route.name, upstream = %up.authority, error = %e, "upstream connection failed");
                    if !body.unread() {
                        return Err(ProxyError::UpstreamUnavailable);
                    }
                }
                Err(Failure::Sent(e)) => {
                    tracing::warn!(route = %route.name, upstream = %up.authority, error = %e, "upstream request failed");
                    return Err(ProxyError::UpstreamUnavailable);
                }
            }
        }
        Err(ProxyError::UpstreamUnavailable)
    };
    match route.timeout {
        Some(t) => tokio::time::timeout(t, attempt)
            .await
            .map_err(|_| ProxyError::UpstreamTimeout)?,
        None => attempt.await,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The body sent upstream. It takes the client's body only when first polled, so a request
/// whose connection was refused can be sent again to the next upstream. Trailers are dropped:
/// a client never gets to add headers after the proxy's checks.
pub struct UpBody {
    slot: Option<Arc<Mutex<Option<Incoming>>>>,
    taken: Option<Incoming>,
    hint: SizeHint,
    end: bool,
}

impl UpBody {
    pub fn empty() -> UpBody {
        UpBody {
            slot: None,
            taken: None,
            hint: SizeHint::with_exact(0),
            end: true,
        }
    }

    pub fn new(body: Incoming) -> UpBody {
        let hint = body.size_hint();
        let end = body.is_end_stream();
        if end {
            return UpBody::empty();
        }
        UpBody {
            slot: Some(Arc::new(Mutex::new(Some(body)))),
            taken: None,
            hint,
            end,
        }
    }

    fn retry(&self) -> UpBody {
        UpBody {
            slot: self.slot.clone(),
            taken: None,
            hint: self.hint,
            end: self.end,
        }
    }

    /// True while no attempt has started reading the client's body.
    fn unread(&self) -> bool {
        match &self.slot {
            None => true,
            Some(s) => s.lock().map(|g| g.is_some()).unwrap_or(false),
        }
    }
}

impl HttpBody for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.taken.is_none() {
            let Some(slot) = &this.slot else {
                return Poll::Ready(None);
            };
            this.taken = slot.lock().ok().and_then(|mut g| g.take());
            if this.taken.is_none() {
                return Poll::Ready(None);
            }
        }
        let Some(inner) = this.taken.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) if f.is_trailers() => Poll::Ready(None),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.end
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// `tls_skip_verify`: accepts any certificate (signatures are still checked). Public for the
/// tests and load tools, which talk to Portcullis's self-signed certificates.
#[derive(Debug)]
pub struct NoVerify(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A response body that ends with an error when the upstream sends nothing for `idle`
/// (the route's `idle_timeout`), so a stalled stream does not hold a connection forever.
pub struct IdleBody<B> {
    inner: B,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleBody {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl<B> HttpBody for IdleBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<super::BoxError>,
{
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(f) => {
                let deadline = tokio::time::Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err("upstream response idle past idle_timeout".into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
