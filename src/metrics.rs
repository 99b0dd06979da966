//! Counters for the admin listener's `/metrics` (Prometheus text format). Labels are bounded:
//! route names from the config, a fixed set of methods, status classes — never raw paths.

use foldhash::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Holds one count of `portcullis_websockets_open`.
pub struct WsGuard(std::sync::Arc<AtomicI64>);

impl Drop for WsGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Metrics {
    /// Per route name: counts by method and status class. A request takes a read lock and
    /// bumps an atomic; only a route name seen for the first time takes the write lock.
    requests: RwLock<HashMap<String, RouteCounts>>,
    latency: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    decisions: [AtomicU64; 3],
    upstream_errors: [AtomicU64; 2],
    sign_ins: AtomicU64,
    sign_in_failures: AtomicU64,
    connections_refused: AtomicU64,
    /// Open client connections, kept by the listener (`Tracker`).
    connections_open: std::sync::Arc<AtomicI64>,
    websockets: std::sync::Arc<AtomicI64>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    last_reload: AtomicU64,
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

/// `[method][status class 1..=5]` counters of one route.
#[derive(Default)]
struct RouteCounts([[AtomicU64; 5]; METHODS.len()]);

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
        let m = Metrics::default();
        m.last_reload.store(crate::clock::now(), Ordering::Relaxed);
        m
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
        let counted = match self.requests.read() {
            Ok(m) => m
                .get(route)
                .map(|c| c.0[mi][class].fetch_add(1, Ordering::Relaxed)),
            Err(_) => Some(0),
        };
        if counted.is_none() {
            if let Ok(mut m) = self.requests.write() {
                m.entry(route.to_string()).or_default().0[mi][class]
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        // One bucket per request; `render` makes them cumulative.
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.latency[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let d = match decision {
            "allow" => Some(0),
            "deny" => Some(1),
            "unauthenticated" => Some(2),
            _ => None,
        };
        if let Some(i) = d {
            self.decisions[i].fetch_add(1, Ordering::Relaxed);
        }
        match status {
            502 => self.upstream_errors[0].fetch_add(1, Ordering::Relaxed),
            504 => self.upstream_errors[1].fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sign_in(&self, ok: bool) {
        if ok {
            &self.sign_ins
        } else {
            &self.sign_in_failures
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one open WebSocket until the guard is dropped.
    /// The open-connections gauge, for the listener to keep.
    pub fn connections_gauge(&self) -> std::sync::Arc<AtomicI64> {
        self.connections_open.clone()
    }

    pub fn websocket_guard(&self) -> WsGuard {
        self.websockets.fetch_add(1, Ordering::Relaxed);
        WsGuard(self.websockets.clone())
    }

    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads.fetch_add(1, Ordering::Relaxed);
            self.last_reload
                .store(crate::clock::now(), Ordering::Relaxed);
        } else {
            self.reload_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let _ = writeln!(o, "# HELP portcullis_requests_total Requests by route, method and status class.\n# TYPE portcullis_requests_total counter");
        if let Ok(m) = self.requests.read() {
            let mut names: Vec<_> = m.keys().collect();
            names.sort();
            for name in names {
                let counts = &m[name];
                let route = name.replace('\\', "\\\\").replace('"', "\\\"");
                for (mi, method) in METHODS.iter().enumerate() {
                    for class in 0..5 {
                        let n = counts.0[mi][class].load(Ordering::Relaxed);
                        if n > 0 {
                            let _ = writeln!(o, "portcullis_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{}xx\"}} {n}", class + 1);
                        }
                    }
                }
            }
        }
        let _ = writeln!(o, "# HELP portcullis_request_duration_seconds Time to answer (headers sent for proxied requests).\n# TYPE portcullis_request_duration_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.latency[i].load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "portcullis_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "portcullis_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            o,
            "portcullis_request_duration_seconds_sum {}",
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "portcullis_request_duration_seconds_count {count}");
        let _ = writeln!(o, "# HELP portcullis_policy_decisions_total Policy decisions.\n# TYPE portcullis_policy_decisions_total counter");
        for (i, d) in ["allow", "deny", "unauthenticated"].iter().enumerate() {
            let _ = writeln!(
                o,
                "portcullis_policy_decisions_total{{decision=\"{d}\"}} {}",
                self.decisions[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(o, "# HELP portcullis_upstream_errors_total Upstream failures (502 unreachable, 504 timeout).\n# TYPE portcullis_upstream_errors_total counter");
        for (i, k) in ["unavailable", "timeout"].iter().enumerate() {
            let _ = writeln!(
                o,
                "portcullis_upstream_errors_total{{kind=\"{k}\"}} {}",
                self.upstream_errors[i].load(Ordering::Relaxed)
            );
        }
        let g = |o: &mut String, name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        g(
            &mut o,
            "portcullis_sign_ins_total",
            "Completed sign-ins.",
            "counter",
            self.sign_ins.load(Ordering::Relaxed).to_string(),
        );
        g(
            &mut o,
            "portcullis_sign_in_failures_total",
            "Refused or failed sign-in callbacks.",
            "counter",
            self.sign_in_failures.load(Ordering::Relaxed).to_string(),
        );
        g(
            &mut o,
            "portcullis_connections_refused_total",
            "Connections closed at accept because max_connections or max_connections_per_ip was reached.",
            "counter",
            self.connections_refused.load(Ordering::Relaxed).to_string(),
        );
        g(
            &mut o,
            "portcullis_connections_open",
            "Open client connections.",
            "gauge",
            self.connections_open.load(Ordering::Relaxed).to_string(),
        );
        g(
            &mut o,
            "portcullis_websockets_open",
            "Open proxied WebSockets.",
            "gauge",
            self.websockets.load(Ordering::Relaxed).to_string(),
        );
        g(
            &mut o,
            "portcullis_config_reloads_total",
            "Config reloads that took effect.",
            "counter",
            self.reloads.load(Ordering::Relaxed).to_string(),
        );
        g(
            &mut o,
            "portcullis_config_reload_failures_total",
            "Config reloads refused (the old config kept serving).",
            "counter",
            self.reload_failures.load(Ordering::Relaxed).to_string(),
        );
        g(
            &mut o,
            "portcullis_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (unix time).",
            "gauge",
            self.last_reload.load(Ordering::Relaxed).to_string(),
        );
        o
    }
}

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
            "portcullis_request_duration_seconds_bucket{le=\"0.001\"} 1",
            "portcullis_request_duration_seconds_bucket{le=\"0.005\"} 2",
            "portcullis_request_duration_seconds_bucket{le=\"0.05\"} 3",
            "portcullis_request_duration_seconds_bucket{le=\"10\"} 3",
            "portcullis_request_duration_seconds_bucket{le=\"+Inf\"} 4",
            "portcullis_request_duration_seconds_count 4",
            "portcullis_policy_decisions_total{decision=\"deny\"} 1",
            "portcullis_upstream_errors_total{kind=\"unavailable\"} 1",
        ] {
            assert!(t.contains(line), "missing {line}\n{t}");
        }
    }
}
