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
}
