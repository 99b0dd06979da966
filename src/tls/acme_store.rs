//! What one host's ACME certificate is, wherever it comes from (an order on this replica,
//! or the store the replicas share): [`HostCert`], the certificate and challenge answers a
//! handshake is served, and [`DirStore`], the `autocert_dir` copy on disk.

use arc_swap::ArcSwapOption;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_acme::ResolvesServerCertAcme;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The ACME side of one host: its current rustls-acme state's resolver and its expiry.
pub struct HostCert {
    /// Installed by the host's task when it starts; none before (no certificate yet either).
    pub(super) resolver: ArcSwapOption<ResolvesServerCertAcme>,
    /// With several replicas (`acme_shared`): the certificate every replica serves, and the
    /// challenge answers of whichever replica orders.
    pub(super) shared_cert: ArcSwapOption<CertifiedKey>,
    pub(super) shared_challenge: ArcSwapOption<CertifiedKey>,
    pub(super) shared_http01: Mutex<HashMap<String, String>>,
    /// Orders this replica placed for the host (with several replicas, one of them orders).
    pub orders: std::sync::atomic::AtomicU32,
    /// notAfter of the certificate in use (unix seconds); 0 before the first one.
    pub(super) not_after: AtomicI64,
    /// When rustls-acme orders its renewal: at 2/3 of its lifetime (unix seconds); 0 before
    /// the first certificate.
    pub(super) renew_at: AtomicI64,
}

impl HostCert {
    pub(super) fn new() -> HostCert {
        HostCert {
            resolver: ArcSwapOption::empty(),
            shared_cert: ArcSwapOption::empty(),
            shared_challenge: ArcSwapOption::empty(),
            shared_http01: Mutex::default(),
            orders: std::sync::atomic::AtomicU32::new(0),
            not_after: AtomicI64::new(0),
            renew_at: AtomicI64::new(0),
        }
    }

    /// The certificate for a handshake, or the TLS-ALPN-01 challenge certificate for a
    /// validation handshake; `None` while there is neither.
    pub fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if is_challenge(&hello) {
            if let Some(c) = self.shared_challenge.load_full() {
                return Some(c);
            }
        } else if let Some(c) = self.shared_cert.load_full() {
            return Some(c);
        }
        self.resolver.load().as_ref()?.resolve(hello)
    }
}

/// Is this handshake an ACME server's TLS-ALPN-01 validation?
pub fn is_challenge(hello: &ClientHello<'_>) -> bool {
    rustls_acme::is_tls_alpn_challenge(hello)
}

/// The ALPN name of TLS-ALPN-01 validation connections (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Waits after the n-th failed order in a row: 5 s, 15 s, 45 s, … up to an hour. Slow enough
/// to stay inside Let's Encrypt's limit of 5 failed validations per host per hour.
pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(3u64.saturating_pow(failures.saturating_sub(1)));
    Duration::from_secs(secs.min(3600))
}

/// Creates `dir` (and parents) and makes it private to this user.
pub(super) fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// `autocert_dir`: account keys and certificates (with their keys) as files only this user can
/// read, written atomically; it also records the expiry of the certificate it sees.
pub(super) struct DirStore {
    pub(super) dir: PathBuf,
    pub(super) cert: Arc<HostCert>,
}

pub(super) fn digest(parts: &[&str]) -> String {
    use base64::Engine;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(p.as_bytes());
        ctx.update(&[0]);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&ctx.finish().as_ref()[..12])
}

impl DirStore {
    pub(super) fn note_expiry(&self, pem: &[u8]) {
        if let Some(Ok(c)) = CertificateDer::pem_slice_iter(pem).next() {
            if let Ok((_, x)) = x509_parser::parse_x509_certificate(&c) {
                let (from, to) = (
                    x.validity().not_before.timestamp(),
                    x.validity().not_after.timestamp(),
                );
                self.cert.not_after.store(to, Ordering::Relaxed);
                self.cert.renew_at.store(
                    to.saturating_sub(to.saturating_sub(from) / 3),
                    Ordering::Relaxed,
                );
            }
        }
    }

    pub(super) async fn read(&self, name: String) -> std::io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.dir.join(name)).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn write(&self, name: String, bytes: &[u8]) -> std::io::Result<()> {
        let dir = self.dir.clone();
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || {
            private_dir(&dir)?;
            let tmp = dir.join(format!(".{name}.tmp"));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(name))
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

#[async_trait::async_trait]
impl rustls_acme::CertCache for DirStore {
    type EC = std::io::Error;
    async fn load_cert(
        &self,
        domains: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EC> {
        let name = format!("{}.{}.pem", domains.join(","), digest(&[directory_url]));
        let pem = self.read(name).await?;
        if let Some(p) = &pem {
            self.note_expiry(p);
        }
        Ok(pem)
    }
    async fn store_cert(
        &self,
        domains: &[String],
        directory_url: &str,
        cert: &[u8],
    ) -> Result<(), Self::EC> {
        self.note_expiry(cert);
        let name = format!("{}.{}.pem", domains.join(","), digest(&[directory_url]));
        self.write(name, cert).await
    }
}

#[async_trait::async_trait]
impl rustls_acme::AccountCache for DirStore {
    type EA = std::io::Error;
    async fn load_account(
        &self,
        contact: &[String],
        directory_url: &str,
    ) -> Result<Option<Vec<u8>>, Self::EA> {
        let mut parts: Vec<&str> = contact.iter().map(String::as_str).collect();
        parts.push(directory_url);
        self.read(format!("account.{}.key", digest(&parts))).await
    }
    async fn store_account(
        &self,
        contact: &[String],
        directory_url: &str,
        account: &[u8],
    ) -> Result<(), Self::EA> {
        let mut parts: Vec<&str> = contact.iter().map(String::as_str).collect();
        parts.push(directory_url);
        self.write(format!("account.{}.key", digest(&parts)), account)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(15));
        assert_eq!(backoff(3), Duration::from_secs(45));
        assert_eq!(backoff(40), Duration::from_secs(3600));
    }

    #[tokio::test]
    async fn cache_files_are_private_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore {
            dir: dir.path().join("acme"),
            cert: Arc::new(HostCert::new()),
        };
        use rustls_acme::AccountCache;
        store
            .store_account(&["mailto:a@b.test".into()], "https://ca.test/dir", b"KEY")
            .await
            .unwrap();
        let back = store
            .load_account(&["mailto:a@b.test".into()], "https://ca.test/dir")
            .await
            .unwrap();
        assert_eq!(back.as_deref(), Some(&b"KEY"[..]));
        let other = store
            .load_account(&[], "https://ca.test/dir")
            .await
            .unwrap();
        assert_eq!(other, None, "another contact is another account");
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join("acme")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        for f in std::fs::read_dir(dir.path().join("acme")).unwrap() {
            let f = f.unwrap();
            assert!(!f.file_name().to_string_lossy().ends_with(".tmp"));
            assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
