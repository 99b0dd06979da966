//! Certificates from PEM files, the self-signed fallback, and trust stores from PEM.

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// Reads a certificate chain and its private key.
pub fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let cert_pem =
        std::fs::read(cert).map_err(|e| format!("cannot read `{}`: {e}", cert.display()))?;
    let key_pem =
        std::fs::read(key).map_err(|e| format!("cannot read `{}`: {e}", key.display()))?;
    pair_from_pem(&cert_pem, &key_pem)
        .and_then(|(chain, key)| {
            CertifiedKey::from_der(chain, key, provider)
                .map_err(|e| format!("the key does not fit the certificate: {e}"))
        })
        .map(Arc::new)
        .map_err(|e| format!("`{}`: {e}", cert.display()))
}

fn pair_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if chain.is_empty() {
        return Err("no certificate in the file".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("no usable private key: {e}"))?;
    Ok((chain, key))
}

/// A trust store from PEM certificates (`tls_custom_ca`, `autocert_trusted_ca`).
pub fn root_store(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| format!("not a PEM certificate: {e}"))?;
        store
            .add(c)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("no certificate in the file".into());
    }
    Ok(store)
}

/// A self-signed certificate for the given hosts (local try-outs without certificates).
pub fn self_signed(
    hosts: &[String],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let mut names: Vec<String> = hosts.to_vec();
    if names.is_empty() {
        names.push("localhost".into());
    }
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    let chain = vec![ck.cert.der().clone()];
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).map_err(|e| e.to_string())?;
    CertifiedKey::from_der(chain, key, provider)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}
