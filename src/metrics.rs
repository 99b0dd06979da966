//! Counters for the admin listener's `/metrics`, kept and written out with `prometheus-client`
//! (OpenMetrics text: label values are escaped by it, so a route `name` with a quote or a newline
//! cannot break the exposition). Labels are bounded: route names from the config, a fixed set of
//! methods, status classes — never raw paths.

use foldhash::HashMap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const DECISIONS: [&str; 3] = ["allow", "deny", "unauthenticated"];
const UPSTREAM_ERRORS: [&str; 2] = ["unavailable", "timeout"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabels {
    route: String,
    enforced: &'static str,
    shadow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabel {
    certificate: String,
}

/// Holds one count of `portcullis_websockets_open`.
pub struct WsGuard(Gauge);

impl Drop for WsGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One route's counters (by method and status class, each made at its first use so only seen
/// combinations are written out) and its latency histogram: found by the route's name once,
/// then bumped with no allocation.
struct RouteHandles {
    counts: [[OnceLock<Counter>; 5]; METHODS.len()],
    duration: Histogram,
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// Per route name; a request takes the read lock, a name seen for the first time the
    /// write lock.
    routes: RwLock<HashMap<String, Arc<RouteHandles>>>,
    decisions: [Counter; DECISIONS.len()],
    upstream_errors: [Counter; UPSTREAM_ERRORS.len()],
    sign_ins: Counter,
    sign_in_failures: Counter,
    connections_refused: Counter,
    /// Open client connections, kept by the listener.
    connections_open: Gauge,
    websockets: Gauge,
    reloads: Counter,
    reload_failures: Counter,
    last_reload: Gauge,
    certificates: Family<CertLabel, Gauge>,
    shadow: Family<ShadowLabels, Counter>,
    session_store_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn method_index(m: &http::Method) -> usize {
    let l = method_label(m);
    METHODS
        .iter()
        .position(|x| *x == l)
        .unwrap_or(METHODS.len() - 1)
}

fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "portcullis_requests",
            "Requests by route, method and status class",
            requests.clone(),
        );
        let durations = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            histogram as fn() -> Histogram,
        );
        registry.register(
            "portcullis_request_duration_seconds",
            "Time to answer, by route (headers sent, for proxied requests)",
            durations.clone(),
        );
        let decision_family = Family::<DecisionLabel, Counter>::default();
        registry.register(
            "portcullis_policy_decisions",
            "Policy decisions",
            decision_family.clone(),
        );
        let decisions = DECISIONS
            .map(|decision| decision_family.get_or_create_owned(&DecisionLabel { decision }));
        let error_family = Family::<KindLabel, Counter>::default();
        registry.register(
            "portcullis_upstream_errors",
            "Upstream failures (unavailable: 502, timeout: 504)",
            error_family.clone(),
        );
        let upstream_errors =
            UPSTREAM_ERRORS.map(|kind| error_family.get_or_create_owned(&KindLabel { kind }));
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let sign_ins = counter(&mut registry, "portcullis_sign_ins", "Completed sign-ins");
        let sign_in_failures = counter(
            &mut registry,
            "portcullis_sign_in_failures",
            "Refused or failed sign-in callbacks",
        );
        let connections_refused = counter(
            &mut registry,
            "portcullis_connections_refused",
            "Connections closed at accept because max_connections or max_connections_per_ip was reached",
        );
        let connections_open = gauge(
            &mut registry,
            "portcullis_connections_open",
            "Open client connections",
        );
        let websockets = gauge(
            &mut registry,
            "portcullis_websockets_open",
            "Open proxied WebSockets and TCP tunnels",
        );
        let reloads = counter(
            &mut registry,
            "portcullis_config_reloads",
            "Config reloads that took effect",
        );
        let reload_failures = counter(
            &mut registry,
            "portcullis_config_reload_failures",
            "Config reloads refused (the old config kept serving)",
        );
        let last_reload = gauge(
            &mut registry,
            "portcullis_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (unix time)",
        );
        last_reload.set(i64::try_from(crate::clock::now()).unwrap_or(i64::MAX));
        let certificates = Family::<CertLabel, Gauge>::default();
        registry.register(
            "portcullis_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (notAfter, unix time)",
            certificates.clone(),
        );
        let shadow = Family::<ShadowLabels, Counter>::default();
        registry.register(
            "portcullis_shadow_policy_disagreements",
            "Requests the route's shadow_policy decided otherwise than its policy",
            shadow.clone(),
        );
        let session_store_up = gauge(
            &mut registry,
            "portcullis_session_store_up",
            "1 while the session store (data_dir, or Redis with session_store) is reachable",
        );
        session_store_up.set(1);
        Metrics {
            session_store_up,
            registry,
            shadow,
            requests,
            durations,
            routes: RwLock::default(),
            decisions,
            upstream_errors,
            sign_ins,
            sign_in_failures,
            connections_refused,
            connections_open,
            websockets,
            reloads,
            reload_failures,
            last_reload,
            certificates,
        }
    }

    /// The handles of the route named `route`, made at its first request.
    fn route(&self, route: &str) -> Option<Arc<RouteHandles>> {
        if let Some(h) = self.routes.read().ok()?.get(route) {
            return Some(h.clone());
        }
        let mut m = self.routes.write().ok()?;
        let h = m.entry(route.to_string()).or_insert_with(|| {
            Arc::new(RouteHandles {
                counts: Default::default(),
                duration: self.durations.get_or_create_owned(&RouteLabel {
                    route: route.to_string(),
                }),
            })
        });
        Some(h.clone())
    }

    /// One finished request.
    pub fn request(
        &self,
        route: Option<&str>,
        method: &http::Method,
        status: u16,
        took: Duration,
        decision: &str,
    ) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let mi = method_index(method);
        let route = route.unwrap_or("-");
        if let Some(h) = self.route(route) {
            h.counts[mi][class]
                .get_or_init(|| {
                    self.requests.get_or_create_owned(&RequestLabels {
                        route: route.to_string(),
                        method: METHODS[mi],
                        status: CLASSES[class],
                    })
                })
                .inc();
            h.duration.observe(took.as_secs_f64());
        }
        if let Some(i) = DECISIONS.iter().position(|d| *d == decision) {
            self.decisions[i].inc();
        }
        match status {
            502 => self.upstream_errors[0].inc(),
            504 => self.upstream_errors[1].inc(),
            _ => 0,
        };
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn sign_in(&self, ok: bool) {
        if ok {
            &self.sign_ins
        } else {
            &self.sign_in_failures
        }
        .inc();
    }

    /// The session-store gauge, for a shared store to keep.
    pub fn session_store_gauge(&self) -> Gauge {
        self.session_store_up.clone()
    }

    /// The open-connections gauge, for the listener to keep.
    pub fn connections_gauge(&self) -> Gauge {
        self.connections_open.clone()
    }

    /// Counts one open WebSocket until the guard is dropped.
    pub fn websocket_guard(&self) -> WsGuard {
        self.websockets.inc();
        WsGuard(self.websockets.clone())
    }

    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads.inc();
            self.last_reload
                .set(i64::try_from(crate::clock::now()).unwrap_or(i64::MAX));
        } else {
            self.reload_failures.inc();
        }
    }

    /// A request the route's shadow policy decided otherwise than its policy (`allow`, `deny`,
    /// `unauthenticated` each).
    pub fn shadow_disagreement(&self, route: &str, enforced: &'static str, shadow: &'static str) {
        self.shadow
            .get_or_create(&ShadowLabels {
                route: route.to_string(),
                enforced,
                shadow,
            })
            .inc();
    }

    /// The certificates served now and when each expires (unix time): the ones listed
    /// replace the ones before.
    pub fn certificates<'a>(&self, expiry: impl Iterator<Item = (&'a str, i64)>) {
        self.certificates.clear();
        for (name, t) in expiry {
            self.certificates
                .get_or_create(&CertLabel {
                    certificate: name.to_string(),
                })
                .set(t);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut o, &self.registry);
        o
    }
}

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_route_method_and_class_and_a_cumulative_histogram() {
        let m = Metrics::new();
        m.request(
            Some("app"),
            &http::Method::GET,
            200,
            Duration::from_micros(500),
            "allow",
        );
        m.request(
            Some("app"),
            &http::Method::GET,
            204,
            Duration::from_millis(30),
            "allow",
        );
        m.request(
            Some("app"),
            &http::Method::from_bytes(b"PROPFIND").unwrap(),
            403,
            Duration::from_secs(20),
            "deny",
        );
        m.request(
            None,
            &http::Method::POST,
            502,
            Duration::from_millis(3),
            "-",
        );
        let t = m.render();
        for line in [
            "portcullis_requests_total{route=\"app\",method=\"GET\",status=\"2xx\"} 2",
            "portcullis_requests_total{route=\"app\",method=\"other\",status=\"4xx\"} 1",
            "portcullis_requests_total{route=\"-\",method=\"POST\",status=\"5xx\"} 1",
            "portcullis_request_duration_seconds_bucket{le=\"0.001\",route=\"app\"} 1",
            "portcullis_request_duration_seconds_bucket{le=\"0.005\",route=\"-\"} 1",
            "portcullis_request_duration_seconds_bucket{le=\"0.05\",route=\"app\"} 2",
            "portcullis_request_duration_seconds_bucket{le=\"10.0\",route=\"app\"} 2",
            "portcullis_request_duration_seconds_bucket{le=\"+Inf\",route=\"app\"} 3",
            "portcullis_request_duration_seconds_count{route=\"app\"} 3",
            "portcullis_policy_decisions_total{decision=\"deny\"} 1",
            "portcullis_upstream_errors_total{kind=\"unavailable\"} 1",
        ] {
            assert!(t.contains(line), "missing {line}\n{t}");
        }
    }

    #[test]
    fn a_route_name_with_quotes_or_newlines_cannot_break_the_exposition() {
        let m = Metrics::new();
        m.request(
            Some("evil\"} 1\nportcullis_sign_ins_total 99\n"),
            &http::Method::GET,
            200,
            Duration::from_millis(1),
            "allow",
        );
        let t = m.render();
        assert!(t.contains("portcullis_sign_ins_total 0"), "{t}");
        assert!(
            !t.lines()
                .any(|l| l.starts_with("portcullis_sign_ins_total 99")),
            "{t}"
        );
        // Every sample line is one name, its labels and a number.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
        assert!(t.ends_with("# EOF\n"), "{t}");
    }

    #[test]
    fn certificates_listed_replace_the_ones_before() {
        let m = Metrics::new();
        m.certificates([("a.test", 100), ("b.test", 200)].into_iter());
        m.certificates([("b.test", 300)].into_iter());
        let t = m.render();
        assert!(
            t.contains(
                "portcullis_certificate_expiry_timestamp_seconds{certificate=\"b.test\"} 300"
            ),
            "{t}"
        );
        assert!(!t.contains("a.test"), "{t}");
    }
}
