//! What a request sees beyond itself: its connection (`ConnInfo`), and the state every
//! connection shares and a reload keeps (`Shared`).

use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::Arc;

use super::sockets;
use crate::auth::revoked::RevocationStore;
use crate::auth::Refreshes;
use crate::runtime::Runtime;

/// What the listener knows about the connection a request came on.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The TLS SNI name, lower-case; `None` on plain HTTP or when the client sent none.
    pub sni: Option<String>,
    pub https: bool,
    /// The peer's address as an `X-Forwarded-For` value, made once for all its requests.
    pub forwarded_for: HeaderValue,
    /// The connection's place under the connection caps (the listener's), released when the
    /// last clone of this `ConnInfo` goes: an upgraded WebSocket or TCP tunnel keeps one.
    hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnInfo")
            .field("peer", &self.peer)
            .field("sni", &self.sni)
            .field("https", &self.https)
            .finish_non_exhaustive()
    }
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, sni: Option<String>, https: bool) -> ConnInfo {
        let forwarded_for = HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        ConnInfo {
            peer,
            sni,
            https,
            forwarded_for,
            hold: None,
        }
    }

    /// This connection, holding `guard` for as long as anything serving it lives.
    pub fn holding(mut self, guard: impl std::any::Any + Send + Sync) -> ConnInfo {
        self.hold = Some(Arc::new(guard));
        self
    }
}

/// State shared by every connection and kept across reloads.
pub struct Shared {
    /// ACME certificates, kept across reloads.
    pub acme: crate::tls::acme::Acme,
    pub runtime: arc_swap::ArcSwap<Runtime>,
    /// Revoked session ids (sign-out).
    pub store: Arc<dyn RevocationStore>,
    pub refreshes: Refreshes,
    /// Session ids as they sign out: open WebSockets of that session close at once.
    pub signed_out: tokio::sync::broadcast::Sender<[u8; 16]>,
    pub metrics: crate::metrics::Metrics,
    /// When a shadow-policy disagreement was last logged, per route and user.
    pub shadow_log: ShadowLog,
    /// Open WebSockets, decided again at every reload.
    pub sockets: Arc<sockets::Registry>,
}

/// Shadow-policy disagreements are logged once per user and route per minute (each is
/// counted in the metrics every time).
#[derive(Default)]
pub struct ShadowLog(std::sync::Mutex<std::collections::HashMap<(usize, String), u64>>);

impl ShadowLog {
    /// Should this disagreement be logged now? Remembers at most 10,000 (route, user) pairs.
    pub fn due(&self, route: usize, user: &str, now: u64) -> bool {
        let Ok(mut m) = self.0.lock() else {
            return false;
        };
        if m.len() >= 10_000 {
            m.retain(|_, at| now.saturating_sub(*at) < 60);
        }
        match m.get_mut(&(route, user.to_string())) {
            Some(at) if now.saturating_sub(*at) < 60 => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                m.insert((route, user.to_string()), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ShadowLog;

    #[test]
    fn a_disagreement_is_logged_once_per_user_and_route_per_minute() {
        let log = ShadowLog::default();
        assert!(log.due(0, "alice", 1000));
        assert!(!log.due(0, "alice", 1059));
        assert!(log.due(1, "alice", 1059), "another route");
        assert!(log.due(0, "bob", 1059), "another user");
        assert!(log.due(0, "alice", 1060), "a minute later");
        // Bounded: past 10,000 pairs, the old ones are forgotten.
        for i in 0..10_000 {
            log.due(2, &format!("u{i}"), 2000);
        }
        assert!(log.due(2, "late", 2100));
        assert!(log.0.lock().unwrap().len() < 10_000);
    }
}
