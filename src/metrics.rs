//! Counters for the admin listener's `/metrics` (Prometheus text format). Labels are bounded:
//! route names from the config, a fixed set of methods, status classes — never raw paths.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
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
    requests: Mutex<HashMap<(String, &'static str, u16), u64>>,
    latency: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
    decisions: [AtomicU64; 3],
    upstream_errors: [AtomicU64; 2],
    sign_ins: AtomicU64,
    sign_in_failures: AtomicU64,
    connections_refused: AtomicU64,
    websockets: std::sync::Arc<AtomicI64>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    last_reload: AtomicU64,
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
        m.last_reload
            .store(crate::auth::session::now(), Ordering::Relaxed);
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
        let class = status / 100 * 100;
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((
                route.unwrap_or("-").to_string(),
                method_label(method),
                class,
            ))
            .or_insert(0) += 1;
        }
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.latency[i].fetch_add(1, Ordering::Relaxed);
            }
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
    pub fn websocket_guard(&self) -> WsGuard {
        self.websockets.fetch_add(1, Ordering::Relaxed);
        WsGuard(self.websockets.clone())
    }

    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads.fetch_add(1, Ordering::Relaxed);
            self.last_reload
                .store(crate::auth::session::now(), Ordering::Relaxed);
        } else {
            self.reload_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let _ = writeln!(o, "# HELP portcullis_requests_total Requests by route, method and status class.\n# TYPE portcullis_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            let mut rows: Vec<_> = m.iter().collect();
            rows.sort();
            for ((route, method, class), n) in rows {
                let route = route.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(o, "portcullis_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{}xx\"}} {n}", class / 100);
            }
        }
        let _ = writeln!(o, "# HELP portcullis_request_duration_seconds Time to answer (headers sent for proxied requests).\n# TYPE portcullis_request_duration_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "portcullis_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                self.latency[i].load(Ordering::Relaxed)
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
