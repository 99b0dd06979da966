//! The pooled client for one route's upstreams, and `send`: round-robin, fail-over on a
//! refused connection, the route's deadline.

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::Body as HttpBody;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::http::h1::{self, Chunked, Framing, ReqFraming};
use crate::http::hop::HopByHop;
use crate::policy::eval::Permitted;

use super::address::Upstream;
use super::conn::*;
use super::exchange::*;
use super::pool::*;
use super::request::*;
use super::response::*;
use super::tls::*;

/// A pooled client for one route's upstreams (HTTP/1.1, plain or TLS).
///
/// A request drives its upstream connection itself — writing the request, reading the
/// response head, then reading the body as the downstream connection asks for it — with the
/// framing done by `h1`: no task per connection and no channel between the request and its
/// connection (docs/performance.md). The connection goes back to the pool when the response has
/// ended where its framing said and the request was sent whole. WebSocket upgrades get a fresh
/// connection run by hyper's client in a task of its own.
pub struct UpstreamClient {
    pub(super) tls: TlsConnector,
    pub(super) server_name: Option<ServerName<'static>>,
    pub(super) pool: Arc<Pool>,
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

    pub(super) async fn connect(&self, up: &Upstream) -> Result<UpConn, Failure> {
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

    pub(super) async fn open(&self, up: &Upstream) -> io::Result<UpIo> {
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
    pub(super) async fn upgrade(
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
    pub(super) async fn request(
        &self,
        up: &Upstream,
        head: Head<'_, impl Fields>,
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
                head.headers.fields(),
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

    pub(super) fn wrap(
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

pub(super) enum Failure {
    /// No connection was made: nothing was sent.
    Connect(String),
    /// The request may have reached the upstream.
    Sent(String),
    /// The route's `timeout` passed before the response head arrived.
    Timeout,
}

/// `step`, by the route's deadline when it has one (`Failure::Timeout` after it): for the
/// rare steps that get a timer of their own (a new connection, an upgrade).
pub(super) async fn by<T>(
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

/// Where a request goes: the route's client and upstreams (in the order to try them), whether
/// the client's `Host` is kept, and the route's deadline for the response head. `route.rs`
/// makes it.
pub struct Destination<'a, I> {
    pub client: &'a UpstreamClient,
    pub upstreams: I,
    pub preserve_host: bool,
    pub timeout: Option<Duration>,
    /// The route's name, for the log.
    pub name: &'a str,
}

/// The request headers an upstream gets, as the proxy made them (`proxy::headers`).
pub trait Fields {
    /// Every field but `Host`, in the order written.
    fn fields(&self) -> impl Iterator<Item = (&http::HeaderName, &http::HeaderValue)>;
    /// The client's `Host`, for a route that preserves it.
    fn client_host(&self) -> &http::HeaderValue;
    /// Is this the upgrade of a WebSocket?
    fn websocket(&self) -> bool;
    /// The same fields as a map, `host` first (hyper's client takes the upgrades).
    fn to_map(&self, host: &http::HeaderValue) -> http::HeaderMap;
}

/// Why no response came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The path (with the upstream's base path) is not a valid request target.
    BadPath,
    /// Refused, reset, or answered with bytes that are no HTTP/1.1 response.
    Unavailable,
    /// The route's deadline passed before the response head.
    Timeout,
}

/// Sends the request to the destination's upstreams: in the order given, and on a refused
/// connection the next one (the body has not been read then). Only a [`Permitted`] request
/// can be sent.
pub async fn send<'u, I, F>(
    to: Destination<'_, I>,
    _permitted: &Permitted,
    parts: http::request::Parts,
    headers: &F,
    path_and_query: String,
    body: UpBody,
) -> Result<Response<UpResponseBody>, Error>
where
    I: Iterator<Item = &'u Upstream>,
    F: Fields,
{
    // One deadline for every attempt: the connection's timer (`UpConn::timer`) on the usual
    // path, a timer of its own for a new connection or an upgrade.
    let deadline = to.timeout.map(|t| Instant::now() + t);
    let mut pq = path_and_query;
    let mut order = to.upstreams.peekable();
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
        .map_err(|_| Error::BadPath)?;
        let host = if to.preserve_host {
            headers.client_host()
        } else {
            &up.host_header
        };
        let sent = if headers.websocket() {
            let mut req = Request::from_parts(parts.clone(), body.retry());
            *req.uri_mut() = http::Uri::from(path);
            *req.version_mut() = http::Version::HTTP_11;
            *req.headers_mut() = headers.to_map(host);
            // Boxed: rare, and large (a future is as large as its largest await).
            Box::pin(by(deadline, to.client.upgrade(up, req))).await
        } else {
            let head = Head {
                method: &parts.method,
                path_and_query: path.as_str(),
                host,
                headers,
            };
            to.client
                .request(up, head, body.retry(), body.unread(), deadline)
                .await
        };
        match sent {
            Ok(resp) => return Ok(resp),
            Err(Failure::Connect(e)) => {
                tracing::warn!(route = %to.name, upstream = %up.authority, error = %e, "upstream connection failed");
                if !body.unread() {
                    return Err(Error::Unavailable);
                }
            }
            Err(Failure::Sent(e)) => {
                tracing::warn!(route = %to.name, upstream = %up.authority, error = %e, "upstream request failed");
                return Err(Error::Unavailable);
            }
            Err(Failure::Timeout) => return Err(Error::Timeout),
        }
    }
    Err(Error::Unavailable)
}
