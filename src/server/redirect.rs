//! The plain-HTTP port (`http_redirect_addr`): every request for a host that a route serves
//! gets a permanent redirect to the same host, path and query over https.

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::error::ProxyError;
use crate::proxy::handle::Shared;
use crate::proxy::{target, Body};

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
