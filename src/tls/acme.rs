//! Certificates from an ACME (RFC 8555) server with rustls-acme: one order per route host,
//! TLS-ALPN-01 on `address`, HTTP-01 on `http_redirect_addr` when TLS-ALPN-01 fails.
//!
//! [`Acme`] lives as long as the server, not a config: a reload only starts orders for new hosts
//! and stops those of removed ones, so a config edit never re-orders a certificate it has.
//! Each host's certificate and account key are cached in `autocert_dir` (0700, files 0600); a
//! restart serves the cached certificate without an order, and renewal happens at 2/3 of the
//! certificate's lifetime (rustls-acme's schedule).

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use rustls::ClientConfig;
use rustls_acme::{AcmeConfig, EventError, EventOk, UseChallenge};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::AbortHandle;

use crate::config::settings::AutocertSettings;

pub use super::acme_store::{backoff, is_challenge, HostCert, ACME_TLS_ALPN};
use super::acme_store::{private_dir, DirStore};

#[derive(Default)]
struct Managed {
    settings: Option<AutocertSettings>,
    /// With several replicas: the session store the orders are shared through.
    store: Option<crate::config::settings::StoreUrl>,
    tasks: HashMap<String, AbortHandle>,
}

impl Drop for Managed {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

/// Every host's ACME certificate, kept up to date by one task per host.
pub struct Acme {
    hosts: ArcSwap<HashMap<String, Arc<HostCert>>>,
    managed: Mutex<Managed>,
    /// This replica's name in the shared ACME lock.
    replica: Arc<str>,
}

impl Default for Acme {
    fn default() -> Acme {
        let mut id = [0u8; 12];
        let _ = aws_lc_rs::rand::fill(&mut id);
        Acme {
            hosts: ArcSwap::default(),
            managed: Mutex::default(),
            replica: id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into(),
        }
    }
}

impl Acme {
    /// The host's ACME certificate holder, if ACME manages that name.
    pub fn get(&self, host: &str) -> Option<Arc<HostCert>> {
        self.hosts.load().get(host).cloned()
    }

    /// The key authorization for an HTTP-01 challenge token, if an order is waiting for it.
    pub fn http01(&self, host: &str, token: &str) -> Option<String> {
        let cert = self.get(host)?;
        if let Some(auth) = cert
            .shared_http01
            .lock()
            .ok()
            .and_then(|m| m.get(token).cloned())
        {
            return Some(auth);
        }
        cert.resolver.load().as_ref()?.get_http_01_key_auth(token)
    }

    /// (host, notAfter) of each certificate obtained so far, for metrics.
    pub fn expiry(&self) -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = self
            .hosts
            .load()
            .iter()
            .map(|(h, c)| (h.clone(), c.not_after.load(Ordering::Relaxed)))
            .filter(|(_, t)| *t > 0)
            .collect();
        v.sort();
        v
    }

    /// Makes the managed hosts these: starts orders for new hosts, stops removed ones, and
    /// starts over when the ACME settings themselves changed. Must run inside Tokio.
    pub fn sync(
        &self,
        settings: Option<&AutocertSettings>,
        client: Option<&Arc<ClientConfig>>,
        hosts: &[String],
        store: Option<&crate::config::settings::StoreUrl>,
    ) {
        let mut m = self.managed.lock().unwrap_or_else(|p| p.into_inner());
        let (settings, client) = match (settings, client) {
            (Some(s), Some(c)) => (s, c),
            _ => {
                for (_, t) in m.tasks.drain() {
                    t.abort();
                }
                m.settings = None;
                self.hosts.store(Arc::default());
                return;
            }
        };
        let mut current: HashMap<String, Arc<HostCert>> = (**self.hosts.load()).clone();
        if m.settings.as_ref() != Some(settings) || m.store.as_ref() != store {
            for (_, t) in m.tasks.drain() {
                t.abort();
            }
            current.clear();
            m.settings = Some(settings.clone());
            m.store = store.cloned();
            if let Err(e) = private_dir(&settings.dir) {
                tracing::error!(dir = %settings.dir.display(), error = %e, "ACME: cannot use autocert_dir; certificates are not cached");
            }
        }
        current.retain(|h, _| hosts.contains(h));
        m.tasks.retain(|h, t| {
            let keep = hosts.contains(h);
            if !keep {
                tracing::info!(host = %h, "ACME: host no longer served, certificate no longer renewed");
                t.abort();
            }
            keep
        });
        for h in hosts {
            if current.contains_key(h) {
                continue;
            }
            let cert = Arc::new(HostCert::new());
            let shared = m
                .store
                .as_ref()
                .and_then(|u| redis::Client::open(u.url.as_str()).ok());
            let task = match shared {
                Some(redis) => tokio::spawn(super::acme_shared::run(
                    h.clone(),
                    settings.clone(),
                    client.clone(),
                    cert.clone(),
                    redis,
                    self.replica.clone(),
                )),
                None => tokio::spawn(run(
                    h.clone(),
                    settings.clone(),
                    client.clone(),
                    cert.clone(),
                    ORDER_DEADLINE,
                )),
            };
            m.tasks.insert(h.clone(), task.abort_handle());
            current.insert(h.clone(), cert);
        }
        self.hosts.store(Arc::new(current));
    }

    /// Stops every order and renewal (server shutdown).
    pub fn stop(&self) {
        self.sync(None, None, &[], None);
    }
}

/// The names of `hosts` that ACME can certify: not IP addresses, not wildcards, not
/// single-label names such as `localhost`. The rest come back as warnings.
pub fn eligible(hosts: &[String]) -> (Vec<String>, Vec<String>) {
    let mut ok = Vec::new();
    let mut warnings = Vec::new();
    for h in hosts {
        let bare = h.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_ok() {
            warnings.push(format!("autocert: `{h}` is an IP address; ACME certificates need a DNS name, so it gets the fallback certificate"));
        } else if h.contains('*') {
            warnings.push(format!("autocert: `{h}` is a wildcard, which needs DNS-01 (not supported); give it a `certificates` entry"));
        } else if !h.contains('.') {
            warnings.push(format!(
                "autocert: `{h}` is not a public DNS name; it gets the fallback certificate"
            ));
        } else {
            ok.push(h.clone());
        }
    }
    (ok, warnings)
}

/// The TLS client for talking to the ACME server: `autocert_trusted_ca` if given, else the web PKI.
pub fn client_config(s: &AutocertSettings) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = match &s.trusted_ca_pem {
        Some(pem) => super::files::root_store(pem.as_bytes())
            .map_err(|e| format!("autocert_trusted_ca: {e}"))?,
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// How long an order may go without an event before it is abandoned and started again.
/// rustls-acme's HTTP requests have no timeout of their own, so a CA (or a network path) that
/// accepts a connection and never answers would otherwise hold the host's order forever. Its
/// own polling is bounded: ~31 s per authorization and ~17 min for a "processing" order.
pub const ORDER_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// How long the next event may take: until the renewal is due (nothing happens before), plus
/// the order's deadline.
fn quiet_allowed(renew_at: i64, now: i64, deadline: Duration) -> Duration {
    let until_renewal = u64::try_from(renew_at.saturating_sub(now)).unwrap_or(0);
    deadline.saturating_add(Duration::from_secs(until_renewal))
}

async fn run(
    host: String,
    s: AutocertSettings,
    client: Arc<ClientConfig>,
    cert: Arc<HostCert>,
    deadline: Duration,
) {
    // TLS-ALPN-01 first; with a redirect port, alternate with HTTP-01 after each failure.
    let kinds: &[&str] = if s.http01 {
        &["tls-alpn-01", "http-01"]
    } else {
        &["tls-alpn-01"]
    };
    let mut failures: u32 = 0;
    loop {
        let kind = kinds[failures as usize % kinds.len()];
        let challenge = if kind == "http-01" {
            UseChallenge::Http01
        } else {
            UseChallenge::TlsAlpn01
        };
        let mut state = AcmeConfig::new_with_client_config([host.as_str()], client.clone())
            .directory(&s.directory)
            .contact(&s.contacts)
            .cache(DirStore {
                dir: s.dir.clone(),
                cert: cert.clone(),
            })
            .challenge_type(challenge)
            .state();
        cert.resolver.store(Some(state.resolver()));
        tracing::info!(%host, challenge = kind, directory = %s.directory, "ACME: checking the certificate (cached, or a new order)");
        loop {
            let quiet = quiet_allowed(
                cert.renew_at.load(Ordering::Relaxed),
                i64::try_from(crate::clock::now()).unwrap_or(i64::MAX),
                deadline,
            );
            let ev = match tokio::time::timeout(quiet, state.next()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(_) => {
                    failures = failures.saturating_add(1);
                    let wait = backoff(failures);
                    tracing::warn!(%host, challenge = kind, quiet_s = quiet.as_secs(), retry_in_s = wait.as_secs(), "ACME: the order made no progress (the CA or the network stopped answering); abandoned, starting over");
                    tokio::time::sleep(wait).await;
                    break;
                }
            };
            match ev {
                Ok(EventOk::DeployedCachedCert) => {
                    tracing::info!(%host, not_after = cert.not_after.load(Ordering::Relaxed), "ACME: serving the cached certificate")
                }
                Ok(EventOk::DeployedNewCert) => {
                    failures = 0;
                    tracing::info!(%host, challenge = kind, "ACME: new certificate issued and served");
                }
                Ok(EventOk::CertCacheStore) => {
                    tracing::info!(%host, not_after = cert.not_after.load(Ordering::Relaxed), "ACME: certificate cached; renewal at 2/3 of its lifetime")
                }
                Ok(EventOk::AccountCacheStore) => {
                    tracing::info!(%host, "ACME: account key cached")
                }
                Err(e @ (EventError::Order(_) | EventError::NewCertParse(_))) => {
                    failures = failures.saturating_add(1);
                    let wait = backoff(failures);
                    tracing::warn!(%host, challenge = kind, error = %e, retry_in_s = wait.as_secs(), "ACME: order failed (is DNS for the host pointing here, and is the port reachable from the internet?)");
                    tokio::time::sleep(wait).await;
                    break;
                }
                Err(e) => tracing::warn!(%host, error = %e, "ACME: cache problem"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_may_be_quiet_until_its_renewal_is_due_plus_the_deadline() {
        let d = Duration::from_secs(60);
        assert_eq!(
            quiet_allowed(0, 1_000, d),
            d,
            "no certificate: an order is running"
        );
        assert_eq!(quiet_allowed(1_500, 1_000, d), Duration::from_secs(560));
        assert_eq!(
            quiet_allowed(900, 1_000, d),
            d,
            "renewal overdue: ordering now"
        );
    }

    /// A CA that accepts connections and never answers: the order is abandoned after the
    /// deadline and started again (on a new connection) instead of waiting forever.
    #[tokio::test]
    async fn an_order_the_ca_never_answers_is_started_again() {
        let ca = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let settings = AutocertSettings {
            directory: format!("https://{}/dir", ca.local_addr().unwrap()),
            contacts: vec![],
            dir: tempfile::tempdir().unwrap().keep(),
            trusted_ca_pem: None,
            http01: false,
        };
        let client = client_config(&settings).unwrap();
        let cert = Arc::new(HostCert::new());
        let order = tokio::spawn(run(
            "a.test".into(),
            settings.clone(),
            client,
            cert,
            Duration::from_millis(300),
        ));
        // Held open, never answered; the second connection is the order started again
        // (after the first failure's 5 s backoff).
        let mut held = Vec::new();
        for _ in 0..2 {
            let (c, _) = tokio::time::timeout(Duration::from_secs(20), ca.accept())
                .await
                .expect("the order was started again")
                .unwrap();
            held.push(c);
        }
        order.abort();
        let _ = std::fs::remove_dir_all(&settings.dir);
    }

    #[test]
    fn only_public_dns_names_are_ordered() {
        let hosts: Vec<String> = [
            "app.example.com",
            "127.0.0.1",
            "[::1]",
            "*.example.com",
            "localhost",
        ]
        .map(String::from)
        .to_vec();
        let (ok, warnings) = eligible(&hosts);
        assert_eq!(ok, vec!["app.example.com".to_string()]);
        assert_eq!(warnings.len(), 4);
    }
}
