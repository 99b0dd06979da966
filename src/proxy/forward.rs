//! The upstream side: pooled keep-alive HTTP/1.1 connections (plain or TLS) that each request
//! drives itself, round-robin over a route's `to` URLs with fail-over on refused connections,
//! timeouts → 502/504.

use bytes::{Buf, Bytes, BytesMut};
use foldhash::HashMap;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::io::poll_read_buf;

use super::error::ProxyError;
use super::headers::UpstreamHeaders;
use super::BoxError;
use crate::http::h1::{self, Chunk, Chunked, Framing, ReqFraming};
use crate::http::hop::HopByHop;
use crate::policy::eval::Permitted;
use crate::route::{Route, Upstream};
use crate::workers::PerWorker;

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

/// How long making a connection (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer room asked for before a read: it starts small (most responses are), and grows
/// while reads fill it (a large body then takes fewer reads), up to the most.
const READ_ROOM: usize = 8 * 1024;
const READ_ROOM_MAX: usize = 128 * 1024;

/// A connection to an upstream.
pub enum UpIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_write(cx, b),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection and what has been read from it but not used yet.
struct UpConn {
    io: UpIo,
    buf: BytesMut,
    /// The request head being written (kept for the next request on this connection).
    head: Vec<u8>,
    /// The room asked for before the next read.
    room: usize,
    /// The route's deadline for the response head, kept with the connection: each request
    /// moves it later (`Sleep::reset` to a later instant does not touch the timer wheel),
    /// where a timer per request would be registered and removed again (bench/README.md).
    /// While the connection waits in the pool it keeps the last request's waker until it is
    /// moved again or fires (one needless wake-up, at most the route's timeout later).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The names of the last response head read on it (see `h1::Names`).
    names: h1::Names,
}

impl UpConn {
    /// Reads more into the buffer; `Ok(0)`: the upstream closed.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let spare = self.buf.capacity() - self.buf.len();
        if spare < self.room / 2 {
            self.buf.reserve(self.room);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let n = ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf))?;
        if n == spare {
            self.room = (self.room * 2).min(READ_ROOM_MAX);
        }
        Poll::Ready(Ok(n))
    }

    /// An idle connection is fit for a request when nothing has arrived on it: no bytes (the
    /// previous response ended where its framing said) and no end (the upstream closed it).
    async fn fit(&mut self) -> bool {
        self.buf.is_empty()
            && std::future::poll_fn(|cx| Poll::Ready(self.poll_fill(cx).is_pending())).await
    }
}

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
    conn: UpConn,
    /// When it stops being reused.
    until: Instant,
}

/// Idle connections kept per upstream and worker.
const IDLE_MAX: usize = 128;
/// An idle connection older than this is closed rather than reused.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// How long before an upstream's announced keep-alive timeout (`Keep-Alive: timeout=N`) its
/// idle connection stops being reused: a request sent as the upstream closes would be lost
/// (only bodiless idempotent ones are retried). Node.js announces 5 s by default.
const CLOSE_MARGIN: Duration = Duration::from_secs(1);

/// How long an idle connection may be reused after a response with these headers: until a
/// second before the upstream said it would close it, at most [`IDLE_FOR`]. Zero: not at all.
fn reuse_for(h: &http::HeaderMap) -> Duration {
    h1::keep_alive_timeout(h).map_or(IDLE_FOR, |secs| {
        Duration::from_secs(secs)
            .saturating_sub(CLOSE_MARGIN)
            .min(IDLE_FOR)
    })
}

impl Pool {
    fn put(&self, key: Arc<str>, conn: UpConn, reuse_for: Duration) {
        if let Ok(mut idle) = self.idle.get().lock() {
            let list = idle.entry(key).or_default();
            if list.len() < IDLE_MAX {
                list.push(Idle {
                    conn,
                    until: Instant::now() + reuse_for,
                });
            }
        }
    }

    fn take(&self, key: &str) -> Option<UpConn> {
        let mut idle = self.idle.get().lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some(i) = list.pop() {
            if Instant::now() < i.until {
                return Some(i.conn);
            }
        }
        None
    }
}

/// What the request head is written from.
struct Head<'a> {
    method: &'a http::Method,
    path_and_query: &'a str,
    host: &'a http::HeaderValue,
    headers: &'a UpstreamHeaders<'a>,
}

/// A pooled client for one route's upstreams (HTTP/1.1, plain or TLS).
///
/// A request drives its upstream connection itself — writing the request, reading the
/// response head, then reading the body as the downstream connection asks for it — with the
/// framing done by `h1`: no task per connection and no channel between the request and its
/// connection (bench/README.md). The connection goes back to the pool when the response has
/// ended where its framing said and the request was sent whole. WebSocket upgrades get a fresh
/// connection run by hyper's client in a task of its own.
pub struct UpstreamClient {
    tls: TlsConnector,
    server_name: Option<ServerName<'static>>,
    pool: Arc<Pool>,
}

impl UpstreamClient {
    pub fn new(tls: &UpstreamTls) -> Result<UpstreamClient, rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut config = if tls.skip_verify {
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
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamClient {
            tls: TlsConnector::from(Arc::new(config)),
            server_name: tls.server_name.clone(),
            pool: Arc::default(),
        })
    }

    async fn connect(&self, up: &Upstream) -> Result<UpConn, Failure> {
        let io = tokio::time::timeout(CONNECT_TIMEOUT, self.open(up))
            .await
            .map_err(|_| Failure::Connect("connection timed out".into()))?
            .map_err(|e| Failure::Connect(error_chain(&e)))?;
        Ok(UpConn {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            room: READ_ROOM,
            timer: None,
            names: h1::Names::default(),
        })
    }

    async fn open(&self, up: &Upstream) -> io::Result<UpIo> {
        let https = up.scheme == http::uri::Scheme::HTTPS;
        let host = &*up.host;
        let port = up
            .authority
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let mut last = None;
        let mut tcp = None;
        for addr in tokio::net::lookup_host((bare, port)).await? {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = match (tcp, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(e),
            (None, None) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the name has no address",
                ))
            }
        };
        tcp.set_nodelay(true)?;
        if !https {
            return Ok(UpIo::Plain(tcp));
        }
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(bare.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        };
        let tls = self.tls.connect(name, tcp).await?;
        Ok(UpIo::Tls(Box::new(tls)))
    }

    /// A WebSocket upgrade: a fresh connection in a task of its own, run by hyper's client.
    async fn upgrade(
        &self,
        up: &Upstream,
        req: Request<UpBody>,
    ) -> Result<Response<UpResponseBody>, Failure> {
        let conn = self.connect(up).await?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(conn.io))
            .await
            .map_err(|e| Failure::Connect(error_chain(&e)))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut resp = sender
            .send_request(req)
            .await
            .map_err(|e| Failure::Sent(error_chain(&e)))?;
        let switched = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        crate::http::hop::response_headers(resp.headers_mut(), switched);
        Ok(resp.map(UpResponseBody::Upgrade))
    }

    /// One request on a pooled or new connection; the response's body drives the connection.
    async fn request(
        &self,
        up: &Upstream,
        head: Head<'_>,
        body: UpBody,
        retryable: bool,
        deadline: Option<Instant>,
    ) -> Result<Response<UpResponseBody>, Failure> {
        let framing =
            h1::request_framing(head.method, body.is_end_stream(), body.size_hint().exact());
        // The head is written into the connection's own buffer: no allocation per request.
        let writer = |conn: &mut UpConn, body: UpBody| {
            conn.head.clear();
            h1::encode_request(
                head.method,
                head.path_and_query,
                head.host,
                head.headers.iter(),
                framing,
                &mut conn.head,
            );
            Writer::new(conn.head.len(), body, framing)
        };
        let head_request = *head.method == http::Method::HEAD;
        // A reused connection the upstream closes without a byte of answer is the keep-alive
        // race (it closed an idle connection as the request arrived): an idempotent request
        // (RFC 9110 §9.2.2) with no body may go out again on a new connection.
        let idempotent = matches!(
            *head.method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
        ) && framing == ReqFraming::None;
        let key = &up.pool_key;
        while let Some(mut conn) = self.pool.take(key) {
            if !conn.fit().await {
                continue;
            }
            let w = writer(&mut conn, body.retry());
            match exchange(conn, w, deadline).await {
                Ok((resp, ex)) => return self.wrap(key, resp, ex, head_request),
                Err(e) if e.timed_out => return Err(Failure::Timeout),
                Err(e) if retryable && body.unread() && (e.unsent || (idempotent && e.silent)) => {
                    tracing::debug!(error = %e.msg, "pooled upstream connection was closed; retrying on a new one");
                }
                Err(e) => return Err(Failure::Sent(e.msg)),
            }
        }
        // A new connection (DNS, TCP, maybe TLS) is the rare path on keep-alive: boxed, so
        // every request's future does not carry its size.
        let mut conn = Box::pin(by(deadline, self.connect(up))).await?;
        let w = writer(&mut conn, body);
        match exchange(conn, w, deadline).await {
            Ok((resp, ex)) => self.wrap(key, resp, ex, head_request),
            Err(e) if e.timed_out => Err(Failure::Timeout),
            Err(e) => Err(Failure::Sent(e.msg)),
        }
    }

    fn wrap(
        &self,
        key: &Arc<str>,
        resp: Response<()>,
        ex: Exchange,
        head_request: bool,
    ) -> Result<Response<UpResponseBody>, Failure> {
        let hop = HopByHop::of(resp.headers());
        let (framing, keep_alive) = h1::response_framing(head_request, &resp, &hop)
            .map_err(|e| Failure::Sent(e.to_string()))?;
        let reuse_for = if hop.has(&h1::KEEP_ALIVE) {
            reuse_for(resp.headers())
        } else {
            IDLE_FOR
        };
        let mut body = RawBody {
            ex: Some(ex),
            state: match framing {
                Framing::Length(n) => BodyState::Length(n),
                Framing::Chunked => BodyState::Chunked(Chunked::default()),
                Framing::Close => BodyState::Close,
            },
            keep_alive: keep_alive && !reuse_for.is_zero(),
            reuse_for,
            pool: Arc::downgrade(&self.pool),
            key: key.clone(),
        };
        // The downstream connection's version is its own: an HTTP/1.0 upstream must not
        // make the client's keep-alive connection close.
        let mut resp = resp;
        *resp.version_mut() = http::Version::HTTP_11;
        if framing == Framing::Chunked {
            // Sent beside `Transfer-Encoding`, it is not the length (RFC 9112 §6.3).
            resp.headers_mut().remove(http::header::CONTENT_LENGTH);
        }
        hop.strip_response(resp.headers_mut(), false);
        // A response without a body may never be polled: the connection is free now.
        if matches!(body.state, BodyState::Length(0)) {
            body.finish();
        }
        Ok(resp.map(|()| UpResponseBody::Raw(body)))
    }
}

enum Failure {
    /// No connection was made: nothing was sent.
    Connect(String),
    /// The request may have reached the upstream.
    Sent(String),
    /// The route's `timeout` passed before the response head arrived.
    Timeout,
}

/// `step`, by the route's deadline when it has one (`Failure::Timeout` after it): for the
/// rare steps that get a timer of their own (a new connection, an upgrade).
async fn by<T>(
    deadline: Option<Instant>,
    step: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), step)
            .await
            .unwrap_or(Err(Failure::Timeout)),
        None => step.await,
    }
}

/// Why an exchange failed, and whether the request may go out again on another connection.
struct ExchangeError {
    msg: String,
    /// No byte of the request was written.
    unsent: bool,
    /// The upstream closed the connection without sending a byte.
    silent: bool,
    /// The route's deadline passed first.
    timed_out: bool,
}

/// The request on its way out: the head, then the body as the client sends it, framed.
struct Writer {
    /// How much of the head (the connection's `head`) has been written, of how much.
    head_at: usize,
    head_len: usize,
    /// Body bytes not written yet.
    out: Bytes,
    body: Option<UpBody>,
    chunked: bool,
    /// With a `Content-Length`: body bytes still due.
    left: u64,
    /// Written since the last flush.
    unflushed: bool,
    wrote: bool,
}

enum WriteError {
    Io(io::Error),
    /// The client's body failed or did not match its length.
    Body(String),
}

impl Writer {
    fn new(head_len: usize, body: UpBody, framing: ReqFraming) -> Writer {
        let (body, left) = match framing {
            ReqFraming::None => (None, 0),
            ReqFraming::Length(n) => ((n > 0).then_some(body), n),
            ReqFraming::Chunked => (Some(body), 0),
        };
        Writer {
            head_at: 0,
            head_len,
            out: Bytes::new(),
            body,
            chunked: framing == ReqFraming::Chunked,
            left,
            unflushed: false,
            wrote: false,
        }
    }

    /// The whole request has been written and flushed.
    fn done(&self) -> bool {
        self.head_at == self.head_len
            && self.out.is_empty()
            && self.body.is_none()
            && !self.unflushed
    }

    /// Writes what it can; ready when the whole request is out.
    fn poll(
        &mut self,
        io: &mut UpIo,
        head: &[u8],
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            if self.head_at < self.head_len {
                let rest = head.get(self.head_at..self.head_len).unwrap_or_default();
                let n = ready!(Pin::new(&mut *io).poll_write(cx, rest)).map_err(WriteError::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                self.head_at += n;
                self.wrote = true;
                self.unflushed = true;
                continue;
            }
            if !self.out.is_empty() {
                let n =
                    ready!(Pin::new(&mut *io).poll_write(cx, &self.out)).map_err(WriteError::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                self.out.advance(n);
                self.wrote = true;
                self.unflushed = true;
                continue;
            }
            if let Some(body) = &mut self.body {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        if data.is_empty() {
                            continue;
                        }
                        if self.chunked {
                            let mut out = BytesMut::with_capacity(data.len() + 20);
                            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                            out.extend_from_slice(&data);
                            out.extend_from_slice(b"\r\n");
                            self.out = out.freeze();
                        } else {
                            let n = data.len() as u64;
                            if n > self.left {
                                return Poll::Ready(Err(WriteError::Body(
                                    "the request body is longer than its length".into(),
                                )));
                            }
                            self.left -= n;
                            self.out = data;
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(WriteError::Body(error_chain(&e))))
                    }
                    Poll::Ready(None) => {
                        self.body = None;
                        if self.chunked {
                            self.out = Bytes::from_static(b"0\r\n\r\n");
                        } else if self.left != 0 {
                            return Poll::Ready(Err(WriteError::Body(
                                "the request body ended before its length".into(),
                            )));
                        }
                        continue;
                    }
                    Poll::Pending => {
                        if self.unflushed {
                            ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            if self.unflushed {
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                self.unflushed = false;
            }
            return Poll::Ready(Ok(()));
        }
    }
}

/// One request and its response on one connection.
struct Exchange {
    conn: UpConn,
    writer: Writer,
    /// Why writing the request failed, if it did: then nothing more is written.
    write_error: Option<String>,
}

impl Exchange {
    /// Moves the request on. A failed write leaves the response to be read; a failed client
    /// body is an error, and the exchange is dropped with it.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), String> {
        if self.write_error.is_some() || self.writer.done() {
            return Ok(());
        }
        match self.writer.poll(&mut self.conn.io, &self.conn.head, cx) {
            Poll::Ready(Err(WriteError::Body(e))) => Err(e),
            Poll::Ready(Err(WriteError::Io(e))) => {
                self.write_error = Some(e.to_string());
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The whole request went out.
    fn sent(&self) -> bool {
        self.write_error.is_none() && self.writer.done()
    }
}

/// Writes the request and reads the response head (1xx interim responses skipped), by the
/// route's deadline if it has one.
async fn exchange(
    mut conn: UpConn,
    writer: Writer,
    deadline: Option<Instant>,
) -> Result<(Response<()>, Exchange), ExchangeError> {
    if let Some(d) = deadline {
        match &mut conn.timer {
            Some(t) => t.as_mut().reset(d.into()),
            None => conn.timer = Some(Box::pin(tokio::time::sleep_until(d.into()))),
        }
    }
    let mut ex = Exchange {
        conn,
        writer,
        write_error: None,
    };
    let mut heard = false;
    let resp = std::future::poll_fn(|cx| {
        let fail = |msg: String, heard: bool, ex: &Exchange| ExchangeError {
            msg: match &ex.write_error {
                Some(w) => format!("{msg} (writing the request: {w})"),
                None => msg,
            },
            unsent: !ex.writer.wrote,
            silent: !heard,
            timed_out: false,
        };
        if let Err(e) = ex.poll_write(cx) {
            return Poll::Ready(Err(fail(e, heard, &ex)));
        }
        loop {
            if !ex.conn.buf.is_empty() {
                heard = true;
                match h1::parse_head(&mut ex.conn.buf, &mut ex.conn.names) {
                    Err(e) => return Poll::Ready(Err(fail(e.to_string(), heard, &ex))),
                    Ok(Some(r)) if r.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                        return Poll::Ready(Err(fail(
                            "the upstream switched protocols unasked".into(),
                            heard,
                            &ex,
                        )))
                    }
                    Ok(Some(r)) if r.status().is_informational() => continue,
                    Ok(Some(r)) => return Poll::Ready(Ok(r)),
                    Ok(None) => {}
                }
            }
            match ex.conn.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(fail(
                        "the upstream closed the connection before a response".into(),
                        heard,
                        &ex,
                    )))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(fail(error_chain(&e), heard, &ex))),
                Poll::Pending => {
                    // Every return of `Pending` has polled the timer, so it will wake us.
                    let timer = deadline.and(ex.conn.timer.as_mut());
                    if timer.is_some_and(|t| t.as_mut().poll(cx).is_ready()) {
                        let mut e = fail("the route's timeout passed".into(), heard, &ex);
                        e.timed_out = true;
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Pending;
                }
            }
        }
    })
    .await?;
    Ok((resp, ex))
}

enum BodyState {
    Length(u64),
    Chunked(Chunked),
    Close,
}

/// A response body read from its connection as the downstream connection asks for it; the
/// connection goes back to the pool when it has ended cleanly.
pub struct RawBody {
    ex: Option<Exchange>,
    state: BodyState,
    keep_alive: bool,
    /// How long the connection may wait in the pool (`reuse_for`).
    reuse_for: Duration,
    pool: std::sync::Weak<Pool>,
    key: Arc<str>,
}

impl RawBody {
    /// The body has ended: the connection goes back to the pool if the request went out
    /// whole, the response ended where its framing said, and nothing else arrived.
    fn finish(&mut self) {
        let Some(ex) = self.ex.take() else {
            return;
        };
        let clean = match &self.state {
            BodyState::Length(n) => *n == 0,
            BodyState::Chunked(c) => c.is_end(),
            BodyState::Close => false,
        };
        if self.keep_alive && clean && ex.sent() && ex.conn.buf.is_empty() {
            if let Some(pool) = self.pool.upgrade() {
                let mut conn = ex.conn;
                if conn.head.capacity() > 16 * 1024 {
                    // An unusually large head: not kept for the life of the connection.
                    conn.head = Vec::new();
                }
                pool.put(self.key.clone(), conn, self.reuse_for);
            }
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        let Some(ex) = self.ex.as_mut() else {
            return Poll::Ready(None);
        };
        if let Err(e) = ex.poll_write(cx) {
            return Poll::Ready(Some(Err(e.into())));
        }
        loop {
            let buf = &mut ex.conn.buf;
            match &mut self.state {
                BodyState::Length(0) => return Poll::Ready(None),
                BodyState::Length(n) if !buf.is_empty() => {
                    let take = buf.len().min(usize::try_from(*n).unwrap_or(usize::MAX));
                    *n -= take as u64;
                    return Poll::Ready(Some(Ok(buf.split_to(take).freeze())));
                }
                BodyState::Chunked(c) => match c.decode(buf) {
                    Ok(Chunk::Data(b)) => return Poll::Ready(Some(Ok(b))),
                    Ok(Chunk::End) => return Poll::Ready(None),
                    Ok(Chunk::NeedMore) => {}
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                },
                BodyState::Close if !buf.is_empty() => {
                    return Poll::Ready(Some(Ok(buf.split().freeze())));
                }
                _ => {}
            }
            match ready!(ex.conn.poll_fill(cx)) {
                Ok(0) if matches!(self.state, BodyState::Close) => return Poll::Ready(None),
                Ok(0) => {
                    return Poll::Ready(Some(Err(
                        "the upstream closed the connection mid-body".into()
                    )))
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }
}

impl HttpBody for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = this.poll_data(cx);
        match &r {
            // A reader that knows the length stops at the last byte without asking for the
            // end: the connection is free as soon as the body has ended either way.
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if matches!(this.state, BodyState::Length(0)) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.ex = None,
            _ => {}
        }
        r.map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.ex.is_none() || matches!(self.state, BodyState::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// The upstream response body: read by the request itself, or hyper's for an upgrade.
// Nearly every response is `Raw`: boxing it would be an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum UpResponseBody {
    Raw(RawBody),
    Upgrade(Incoming),
}

impl HttpBody for UpResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpResponseBody::Raw(b) => Pin::new(b).poll_frame(cx),
            UpResponseBody::Upgrade(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpResponseBody::Raw(b) => b.is_end_stream(),
            UpResponseBody::Upgrade(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpResponseBody::Raw(b) => b.size_hint(),
            UpResponseBody::Upgrade(b) => b.size_hint(),
        }
    }
}

/// Sends the request to the route's upstreams: round-robin, and on a refused connection the
/// next one (the body has not been read then). Only a [`Permitted`] request can be sent, and
/// only with the headers `headers::request_headers` made.
pub async fn send(
    route: &Route,
    _permitted: &Permitted,
    parts: http::request::Parts,
    headers: UpstreamHeaders<'_>,
    path_and_query: String,
    body: UpBody,
) -> Result<Response<UpResponseBody>, ProxyError> {
    // One deadline for every attempt: the connection's timer (`UpConn::timer`) on the usual
    // path, a timer of its own for a new connection or an upgrade.
    let deadline = route.timeout.map(|t| Instant::now() + t);
    let mut pq = path_and_query;
    let mut order = route.upstream_order().peekable();
    while let Some(up) = order.next() {
        let last = order.peek().is_none();
        // The last candidate takes the path (leaving an empty one behind); earlier ones
        // get a copy for a fail-over.
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
        let host = if route.preserve_host_header {
            headers.host()
        } else {
            &up.host_header
        };
        let sent = if headers.websocket() {
            let mut req = Request::from_parts(parts.clone(), body.retry());
            *req.uri_mut() = http::Uri::from(path);
            *req.version_mut() = http::Version::HTTP_11;
            *req.headers_mut() = headers.to_map(host);
            // Boxed: rare, and large (a future is as large as its largest await).
            Box::pin(by(deadline, route.client.upgrade(up, req))).await
        } else {
            let head = Head {
                method: &parts.method,
                path_and_query: path.as_str(),
                host,
                headers: &headers,
            };
            route
                .client
                .request(up, head, body.retry(), body.unread(), deadline)
                .await
        };
        match sent {
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
            Err(Failure::Timeout) => return Err(ProxyError::UpstreamTimeout),
        }
    }
    Err(ProxyError::UpstreamUnavailable)
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
