//! The typed global settings, as compiled from the config (`compile`) and read by everything
//! below the proxy: the listeners, sign-in, certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::Pos;

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// How access-log and diagnostic lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A PEM certificate chain and its key, as named in `certificates`.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub pos: Pos,
}

/// ACME settings (`autocert: true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutocertSettings {
    /// The RFC 8555 directory URL.
    pub directory: String,
    /// `mailto:` contacts for the account.
    pub contacts: Vec<String>,
    /// Where the account key and certificates are cached (`autocert_dir`).
    pub dir: PathBuf,
    /// PEM roots to trust for the ACME server (`autocert_trusted_ca`); the web PKI otherwise.
    pub trusted_ca_pem: Option<String>,
    /// Also try HTTP-01 (on `http_redirect_addr`) when TLS-ALPN-01 fails.
    pub http01: bool,
}

/// Sign-in settings (OpenID Connect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdpSettings {
    pub provider_url: url::Url,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    pub groups_claim: String,
}

/// Session cookie settings.
#[derive(Clone, Debug)]
pub struct CookieSettings {
    /// 32-byte key from `cookie_secret`.
    pub secret: Option<[u8; 32]>,
    pub name: String,
    pub expire: Duration,
    pub domain: Option<String>,
}

/// The global (non-route) settings, compiled.
#[derive(Clone, Debug)]
pub struct Settings {
    pub address: SocketAddr,
    pub http_redirect_addr: Option<SocketAddr>,
    pub insecure_server: bool,
    pub certificates: Vec<CertFiles>,
    pub autocert: Option<AutocertSettings>,
    pub idp: Option<IdpSettings>,
    pub cookie: CookieSettings,
    /// `signing_key`, checked: an EC P-256 key.
    pub signing_key: Option<crate::config::keys::SigningKey>,
    pub metrics_address: Option<SocketAddr>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub timeout_read_header: Duration,
    pub timeout_idle: Duration,
    /// Open connections in all, and from one client address (IPv6: its /64).
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// `Strict-Transport-Security: max-age=…` on every HTTPS response; `None` = not sent.
    pub hsts_max_age: Option<Duration>,
    pub data_dir: PathBuf,
    /// `session_store`: revocations shared through Redis/Valkey (several replicas); `None`
    /// keeps them in `data_dir` only.
    pub session_store: Option<StoreUrl>,
}

/// A `session_store` URL checked by the config; `shown` has no password (for logs).
#[derive(Clone)]
pub struct StoreUrl {
    pub url: String,
    pub shown: String,
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PartialEq for StoreUrl {
    fn eq(&self, other: &StoreUrl) -> bool {
        self.url == other.url
    }
}

impl StoreUrl {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://…` (TLS).
    pub fn parse(s: &str) -> Result<StoreUrl, String> {
        let u = url::Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
        if u.scheme() != "redis" && u.scheme() != "rediss" {
            return Err(format!(
                "`{}://…`: the store is `redis://` or `rediss://` (TLS)",
                u.scheme()
            ));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err("needs a host".into());
        }
        let db = u.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(format!(
                "the path names the database, a number (`/0`), not `{}`",
                u.path()
            ));
        }
        if u.query().is_some() || u.fragment().is_some() {
            return Err("no query or fragment".into());
        }
        redis::Client::open(s).map_err(|e| e.to_string())?;
        let mut shown = u.clone();
        if u.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        Ok(StoreUrl {
            url: s.to_string(),
            shown: shown.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_are_checked_and_never_shown_with_their_password() {
        let u = StoreUrl::parse("redis://:s3cret@valkey:6379/2").unwrap();
        assert!(!u.shown.contains("s3cret") && !format!("{u:?}").contains("s3cret"));
        assert!(u.shown.contains("valkey:6379/2"));
        assert!(StoreUrl::parse("rediss://cache.example.com").is_ok());
        for bad in [
            "http://x",
            "redis://",
            "redis://h/db",
            "redis://h/0?x=1",
            "nope",
        ] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
