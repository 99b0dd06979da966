//! The admin listener (`metrics_address`): `/healthz` (alive), `/readyz` (config loaded,
//! listeners up), and the client side of `portcullis health`.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::state::Shared;
use crate::proxy::Body;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    super::serve_small(listener, shutdown, move |req| answer(&shared, req)).await;
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/metrics" => {
            let rt = shared.runtime.load();
            let acme = shared.acme.expiry();
            let files = rt
                .certs
                .as_ref()
                .map(|c| c.expiry.as_slice())
                .unwrap_or(&[]);
            shared.metrics.certificates(
                files
                    .iter()
                    .chain(acme.iter())
                    .map(|(name, t)| (name.as_str(), *t)),
            );
            let text = shared.metrics.render();
            let mut r = Response::new(Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            r
        }

        // The listeners are bound before this listener starts and a runtime is always
        // loaded; what can still be missing is the identity provider.
        "/readyz" => {
            let rt = shared.runtime.load();
            if rt.auth.oidc.as_ref().is_some_and(|o| !o.is_ready()) {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "identity provider not discovered yet\n",
                )
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }

        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// GETs `url` (plain http) and returns the status code.
pub async fn probe(url: &str) -> Result<u16, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs can be probed".into());
    }
    let authority = uri.authority().ok_or("the URL needs a host")?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let work = async {
        let tcp = tokio::net::TcpStream::connect((authority.host(), port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(http::header::HOST, authority.as_str())
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        Ok::<u16, String>(resp.status().as_u16())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| "timed out".to_string())?
}
