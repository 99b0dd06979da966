//! One upstream URL of a route's `to`, split once when the config is compiled.

use http::uri::{Authority, Scheme};
use http::HeaderValue;

/// One upstream URL, split once.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The authority's host (`[…]` for IPv6), taken out once: the assertion's audience.
    pub host: Box<str>,
    /// The `to` URL's path without its trailing `/` (empty for none), put in front of the
    /// forwarded path.
    pub base_path: String,
    /// The `Host` the upstream expects when `preserve_host_header` is off.
    pub host_header: HeaderValue,
    /// `scheme://authority`: names this upstream's idle connections in the pool.
    pub pool_key: std::sync::Arc<str>,
}

impl Upstream {
    pub fn from_url(u: &url::Url) -> Result<Upstream, String> {
        let host = u.host_str().ok_or("no host")?;
        let authority_str = match u.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let authority: Authority = authority_str
            .parse()
            .map_err(|_| "not a valid host".to_string())?;
        let scheme = if u.scheme() == "https" {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let host_header =
            HeaderValue::from_str(&authority_str).map_err(|_| "not a valid host".to_string())?;
        Ok(Upstream {
            pool_key: std::sync::Arc::from(format!("{scheme}://{authority}")),
            scheme,
            host: authority.host().into(),
            authority,
            base_path: u.path().trim_end_matches('/').to_string(),
            host_header,
        })
    }

    /// A TCP route's target, `tcp://host:port`: only its authority is used.
    pub fn from_tcp_url(u: &url::Url) -> Result<Upstream, String> {
        let host = u.host_str().ok_or("no host")?;
        let port = u.port().ok_or("no port")?;
        let authority_str = format!("{host}:{port}");
        let authority: Authority = authority_str
            .parse()
            .map_err(|_| "not a valid host".to_string())?;
        let host_header =
            HeaderValue::from_str(&authority_str).map_err(|_| "not a valid host".to_string())?;
        Ok(Upstream {
            pool_key: std::sync::Arc::from(format!("tcp://{authority}")),
            scheme: Scheme::HTTP,
            host: authority.host().into(),
            authority,
            base_path: String::new(),
            host_header,
        })
    }
}
