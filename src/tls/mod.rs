//! TLS termination: certificates chosen by SNI, HTTP/2 and HTTP/1.1 by ALPN.

pub mod acme;
mod acme_shared;
mod acme_store;
pub mod files;

use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::settings::Settings;

/// Picks the certificate for a handshake: the first configured one valid for the SNI name,
/// else the first one (clients that send no SNI, or a name no route serves).
#[derive(Debug)]
pub struct CertResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    /// (subject, notAfter as unix seconds) of each certificate served, for metrics.
    pub expiry: Vec<(String, i64)>,
}

/// Subject and expiry (unix seconds) of a DER certificate.
pub fn expiry_of(der: &[u8]) -> Option<(String, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_string()),
                _ => None,
            })
        })
        .unwrap_or_else(|| cert.subject().to_string());
    Some((subject, cert.validity().not_after.timestamp()))
}

/// An SNI name as route hosts are written: lower case, no trailing dot.
pub fn normalize_sni(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl CertResolver {
    /// The configured certificate for this (normalized) name, if one covers it.
    pub fn covering(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.by_name.get(name).cloned()
    }

    /// The certificate for names nothing else covers.
    pub fn fallback(&self) -> Arc<CertifiedKey> {
        self.default.clone()
    }

    /// Hosts that no certificate file covers (ACME orders for these).
    pub fn uncovered<'a>(&self, hosts: &'a [String]) -> Vec<&'a String> {
        hosts
            .iter()
            .filter(|h| !self.by_name.contains_key(*h))
            .collect()
    }
}

fn valid_for(cert: &CertificateDer<'_>, host: &str) -> bool {
    let Ok(name) = ServerName::try_from(host) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
}

/// The certificates to serve for these settings and route hosts; the strings are warnings.
/// An error names the `certificates` entry it is about, when it is about one.
pub fn resolver(
    settings: &Settings,
    hosts: &[String],
) -> Result<(CertResolver, Vec<String>), (Option<usize>, String)> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut warnings = Vec::new();
    let mut keys = Vec::new();
    for (i, c) in settings.certificates.iter().enumerate() {
        keys.push(files::load_pair(&c.cert, &c.key, &provider).map_err(|e| (Some(i), e))?);
    }
    let autocert = settings.autocert.is_some();
    let mut by_name = HashMap::new();
    for h in hosts {
        match keys
            .iter()
            .find(|k| k.cert.first().is_some_and(|c| valid_for(c, h)))
        {
            Some(k) => {
                by_name.insert(h.clone(), k.clone());
            }
            // ACME orders a certificate for it.
            None if autocert => {}
            None if keys.is_empty() => {}
            None => warnings.push(format!(
                "no certificate covers `{h}`; the first certificate will be served for it"
            )),
        }
    }
    let expiry = keys
        .iter()
        .filter_map(|k| k.cert.first().and_then(|c| expiry_of(c)))
        .collect();
    let default = match keys.first() {
        Some(k) => k.clone(),
        // With autocert: served to names without a certificate yet (or ever: IPs, no SNI).
        None if autocert => files::self_signed(hosts, &provider).map_err(|e| (None, e))?,
        None => {
            warnings.push(format!(
                "no `certificates` and no `autocert`: serving a self-signed certificate for {}; browsers will warn. Fine for a local try-out, not for real use",
                hosts.join(", ")
            ));
            let k = files::self_signed(hosts, &provider).map_err(|e| (None, e))?;
            for h in hosts {
                by_name.insert(h.clone(), k.clone());
            }
            k
        }
    };
    Ok((
        CertResolver {
            by_name,
            default,
            expiry,
        },
        warnings,
    ))
}

/// A rustls server config over a resolver, offering h2 and http/1.1.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>, String> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // AES-128-GCM first: its SHA-256 key schedule costs half of AES-256's SHA-384 in a full
    // handshake (docs/performance.md), and every suite offered is strong. Applied in this order
    // whatever the client prefers (`ignore_client_order`).
    provider.cipher_suites.sort_by_key(|s| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 2,
        _ => 3,
    });
    let provider = Arc::new(provider);
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // `acme-tls/1` is only ever chosen by an ACME server validating TLS-ALPN-01; such a
    // connection is closed right after the handshake.
    cfg.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        acme::ACME_TLS_ALPN.to_vec(),
    ];
    // Resumption for returning clients: stateless tickets (keys rotated by rustls), so it
    // scales to any number of clients with no per-client cache.
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| e.to_string())?;
    cfg.send_tls13_tickets = 1;
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}
