//! Routes: which upstream serves a request, by host (and port) then path, first match in
//! file order. No match is a 404; there is never a default upstream.

use http::HeaderValue;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::policy::Policy;
use crate::upstream::{Destination, Upstream, UpstreamClient};

/// The `from` of a route: host, and port when one is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FromMatch {
    pub https: bool,
    /// A TCP route (`tcp+https://host:port`): reached with CONNECT `host:port`, never by an
    /// HTTP request; its port names the target, not a listener.
    pub tcp: bool,
    /// Lower-case, without a trailing dot.
    pub host: String,
    /// When `from` names no port, any port on which Portcullis listens matches.
    pub port: Option<u16>,
}

impl FromMatch {
    pub fn origin_string(&self) -> String {
        let scheme = match (self.tcp, self.https) {
            (false, true) => "https",
            (false, false) => "http",
            (true, true) => "tcp+https",
            (true, false) => "tcp+http",
        };
        match self.port {
            Some(p) => format!("{scheme}://{}:{p}", self.host),
            None => format!("{scheme}://{}", self.host),
        }
    }

    pub fn matches(&self, host: &str, port: Option<u16>) -> bool {
        self.host == host && self.port.is_none_or(|p| Some(p) == port)
    }
}

/// How a route matches paths (already normalized, see `proxy::target`).
#[derive(Clone, Debug)]
pub enum PathMatch {
    Any,
    /// `prefix: /app` matches `/app`, `/app/x` and `/apple` alike, as in Pomerium.
    Prefix(String),
    Exact(String),
    /// Anchored: must match the whole path.
    Regex(regex::Regex),
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(r) => r.is_match(path),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            PathMatch::Any => String::new(),
            PathMatch::Prefix(p) => format!(" prefix {p}"),
            PathMatch::Exact(p) => format!(" path {p}"),
            PathMatch::Regex(r) => format!(" regex {}", r.as_str()),
        }
    }
}

/// Request headers a route sets, in order.
pub type SetHeaders = Vec<(http::HeaderName, HeaderValue)>;

/// One `to` entry: the upstreams that serve the users its `when` picks (the route's policy
/// holds the `when`s, see `policy::Policy::targets`), round-robin.
pub struct Target {
    pub upstreams: Vec<Upstream>,
    /// Round-robin cursor over `upstreams`.
    pub next: AtomicUsize,
}

impl Target {
    pub fn new(upstreams: Vec<Upstream>) -> Target {
        Target {
            upstreams,
            next: AtomicUsize::new(0),
        }
    }

    /// Its upstreams as written (`http://a:1, http://b:2/base`), for `explain`, the logs and
    /// telling whether a reload moved a WebSocket's user elsewhere.
    pub fn describe(&self) -> String {
        self.upstreams
            .iter()
            .map(|u| format!("{}{}", u.pool_key, u.base_path))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Upstreams in the order to try them: round-robin start, then the others.
    fn order(&self) -> impl Iterator<Item = &Upstream> {
        let n = self.upstreams.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(move |i| &self.upstreams[(start + i) % n])
    }
}

/// A compiled route.
pub struct Route {
    /// For logs and metrics (bounded: never a raw request path).
    pub name: String,
    pub from: FromMatch,
    pub path: PathMatch,
    /// The `to` entries, at least one; the policy's decision names the one that serves.
    pub targets: Vec<Target>,
    /// Each grant's headers, in the order of `policy.grants`.
    pub grants: Vec<SetHeaders>,
    pub prefix_rewrite: Option<String>,
    pub preserve_host_header: bool,
    pub allow_websockets: bool,
    /// Time allowed until the upstream's response headers; never applied to an open WebSocket.
    pub timeout: Option<Duration>,
    /// A response body that sends nothing for this long is ended.
    pub idle_timeout: Option<Duration>,
    pub set_request_headers: Vec<(http::HeaderName, HeaderValue)>,
    /// Folded (`headers::folded_name`): a client's header under any spelling that folds the
    /// same is removed.
    pub remove_request_headers: Vec<http::HeaderName>,
    pub pass_identity_headers: bool,
    /// Header name → claim name, added for signed-in users.
    pub jwt_claims_headers: Vec<(http::HeaderName, String)>,
    /// Every header name Portcullis sets on any route of the config (`jwt_claims_headers`,
    /// `set_request_headers`), folded (`headers::folded_name`):
    /// client copies under any spelling that folds the same are stripped.
    pub owned_headers: Vec<http::HeaderName>,
    /// Every cookie name a route of the config sets in its `Cookie` header: a client's cookie
    /// of that name is stripped on every route (a route that sets `Cookie` itself owns the
    /// whole header, see `owned_headers`).
    pub owned_cookies: Vec<String>,
    pub policy: Policy,
    /// `shadow_policy`: decided beside `policy` on every request and never enforced; where the
    /// two disagree it is logged and counted.
    pub shadow: Option<Policy>,
    pub client: UpstreamClient,
    /// Line of the route in the config file.
    pub line: u32,
    /// Its column (with `line`, where errors about the route as a whole point).
    pub col: u32,
    /// Position in the route table.
    pub index: usize,
}

impl Route {
    /// The `to` entry the policy chose (`Permitted::target`); the first should an index
    /// ever be out of range (it cannot be: both come from the same compiled route).
    pub fn target(&self, chosen: usize) -> &Target {
        self.targets.get(chosen).unwrap_or(&self.targets[0])
    }

    /// Where this route sends a request the policy let through to `to` entry `chosen`: its
    /// client and that entry's upstreams, round-robin.
    pub fn destination(&self, chosen: usize) -> Destination<'_, impl Iterator<Item = &Upstream>> {
        Destination {
            client: &self.client,
            upstreams: self.target(chosen).order(),
            preserve_host: self.preserve_host_header,
            timeout: self.timeout,
            name: &self.name,
        }
    }

    /// Everything this route decides about the headers a user's requests carry upstream
    /// (its own edits, the grant `chosen`, the identity headers): an open WebSocket whose
    /// value changes at a reload is closed, so that it reconnects with the new ones.
    pub fn forwarding(&self, chosen: Option<usize>) -> String {
        format!(
            "{:?}|{:?}|{:?}|{:?}|{}|{}",
            self.set_request_headers,
            self.granted(chosen),
            self.remove_request_headers,
            self.jwt_claims_headers,
            self.pass_identity_headers,
            self.preserve_host_header,
        )
    }

    /// The headers of grant `chosen` (`Permitted::grant`), none without one.
    pub fn granted(&self, chosen: Option<usize>) -> &[(http::HeaderName, HeaderValue)] {
        chosen
            .and_then(|g| self.grants.get(g))
            .map_or(&[], Vec::as_slice)
    }
}

/// All routes, in file order.
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(mut routes: Vec<Route>) -> Self {
        for (i, r) in routes.iter_mut().enumerate() {
            r.index = i;
        }
        RouteTable { routes }
    }

    /// First HTTP route whose host (and port) and path match.
    pub fn find(&self, host: &str, port: Option<u16>, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| !r.from.tcp && r.from.matches(host, port) && r.path.matches(path))
    }

    /// The TCP route for a CONNECT to `host:port`, if one names exactly that.
    pub fn find_tcp(&self, host: &str, port: u16) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.from.tcp && r.from.host == host && r.from.port == Some(port))
    }

    /// Whether the first route on this host is https (its sign-in URLs use that scheme).
    pub fn host_is_https(&self, host: &str) -> Option<bool> {
        self.routes
            .iter()
            .find(|r| r.from.host == host)
            .map(|r| r.from.https)
    }

    /// Is any route served on this host? (Decides 404 vs 421 on SNI mismatch.)
    pub fn has_host(&self, host: &str) -> bool {
        self.routes.iter().any(|r| r.from.host == host)
    }

    pub fn hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = self.routes.iter().map(|r| r.from.host.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}
