//! The upstream side: pooled keep-alive connections (HTTP/1.1, plain or TLS), round-robin
//! over a route's `to` URLs with fail-over on refused connections, timeouts → 502/504.

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use super::error::ProxyError;
use crate::policy::eval::Permitted;
use crate::route::Route;

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

/// A pooled client for one route's upstreams.
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, UpBody>,
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
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .set_host(false)
            .build(connector);
        Ok(UpstreamClient { client })
    }
}

/// Sends the request to the route's upstreams: round-robin, and on a refused connection the
/// next one (the body has not been read then). Only a [`Permitted`] request can be sent.
pub async fn send(
    route: &Route,
    _permitted: &Permitted,
    parts: http::request::Parts,
    path_and_query: &str,
    body: UpBody,
) -> Result<Response<Incoming>, ProxyError> {
    let attempt = async {
        let mut last = ProxyError::UpstreamUnavailable;
        for up in route.upstream_order() {
            let uri = Uri::builder()
                .scheme(up.scheme.clone())
                .authority(up.authority.clone())
                .path_and_query(format!("{}{}", up.base_path, path_and_query))
                .build()
                .map_err(|_| ProxyError::BadRequest("the path cannot be forwarded".into()))?;
            let mut req = Request::from_parts(parts.clone(), body.retry());
            *req.uri_mut() = uri;
            *req.version_mut() = http::Version::HTTP_11;
            if !route.preserve_host_header {
                req.headers_mut()
                    .insert(http::header::HOST, up.host_header.clone());
            }
            match route.client.client.request(req).await {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    tracing::warn!(route = %route.name, upstream = %up.authority, error = %error_chain(&e), "upstream request failed");
                    last = ProxyError::UpstreamUnavailable;
                    if !(e.is_connect() && body.unread()) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
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

/// `tls_skip_verify`: accepts any certificate (signatures are still checked).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

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
