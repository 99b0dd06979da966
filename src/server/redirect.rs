//! The plain-HTTP port (`http_redirect_addr`): every request for a host that a route serves
//! gets a permanent redirect to the same host, path and query over https; ACME HTTP-01
//! challenges (`/.well-known/acme-challenge/…`) are answered here.

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::target;
use crate::proxy::error::ProxyError;
use crate::proxy::state::Shared;
use crate::proxy::Body;

pub async fn serve(
    listener: TcpListener,
    https_port: u16,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    super::serve_small(listener, shutdown, move |req| {
        redirect(&shared, https_port, req)
    })
    .await;
}

fn redirect(shared: &Shared, https_port: u16, req: &Request<Incoming>) -> Response<Body> {
    let t = match target::parse(req.method(), req.uri(), req.headers()) {
        Ok(t) => t,
        Err(e) => return ProxyError::BadRequest(e.to_string()).into_response(false),
    };
    if let Some(token) = t.path.strip_prefix("/.well-known/acme-challenge/") {
        // HTTP-01: answered only while an order for this host waits for this token.
        return match shared.acme.http01(&t.host, token) {
            Some(key_auth) => {
                let mut r = Response::new(
                    http_body_util::Full::new(bytes::Bytes::from(key_auth))
                        .map_err(|e| match e {})
                        .boxed(),
                );
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            None => ProxyError::NotFound.into_response(false),
        };
    }
    if !shared.runtime.load().routes.has_host(&t.host) {
        return ProxyError::NotFound.into_response(false);
    }
    let host = if t.host.contains(':') && !t.host.starts_with('[') {
        format!("[{}]", t.host)
    } else {
        t.host.clone()
    };
    let authority = if https_port == 443 {
        host
    } else {
        format!("{host}:{https_port}")
    };
    let location = format!("https://{authority}{}", t.path_and_query(&t.path));
    let mut r = Response::new(Empty::new().map_err(|e| match e {}).boxed());
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => ProxyError::BadRequest("unusable target".into()).into_response(false),
    }
}
