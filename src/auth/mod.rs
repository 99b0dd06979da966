//! Sign-in: OpenID Connect, the session cookie, server-side revocation, the identity
//! assertion for upstreams, and the `/.portcullis/` endpoints.

pub mod assertion;
pub mod endpoints;
pub mod oidc;
pub mod revoked;
pub mod session;

use http::{HeaderMap, HeaderValue};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::Settings;
use assertion::Signer;
use oidc::Oidc;
use revoked::RevocationStore;
use session::{now, CookieJar, CookieKey, Session};

/// Sign-in state built from one config. Parts that must outlive a reload (the IdP
/// discovery, a generated signing key) are carried over from the previous one when their
/// settings did not change.
pub struct Auth {
    pub key: Option<CookieKey>,
    pub jar: CookieJar,
    pub oidc: Option<Arc<Oidc>>,
    pub signer: Arc<Signer>,
    signing_key_pem: Option<String>,
}

impl Auth {
    pub fn build(settings: &Settings, prev: Option<&Auth>) -> Result<(Auth, Vec<String>), String> {
        let mut warnings = Vec::new();
        let key = settings
            .cookie
            .secret
            .as_ref()
            .map(CookieKey::new)
            .transpose()?;
        let oidc = match (&settings.idp, prev.and_then(|p| p.oidc.as_ref())) {
            (Some(idp), Some(old))
                if old.settings == *idp && old.session_lifetime == settings.cookie.expire =>
            {
                Some(old.clone())
            }
            (Some(idp), _) => Some(Arc::new(Oidc::new(idp.clone(), settings.cookie.expire)?)),
            (None, _) => None,
        };
        if oidc.is_some() && key.is_none() {
            return Err("sign-in needs cookie_secret (32 random bytes, base64): make one with `portcullis secret`".into());
        }
        let signer = match prev {
            Some(p) if p.signing_key_pem == settings.signing_key_pem => p.signer.clone(),
            _ => {
                let (s, generated) = Signer::new(settings.signing_key_pem.as_deref())?;
                if generated {
                    warnings.push("no signing_key: the assertion JWT is signed with a key made at start; upstreams verifying it must fetch /.well-known/portcullis/jwks.json again after a restart".into());
                }
                Arc::new(s)
            }
        };
        Ok((
            Auth {
                key,
                jar: CookieJar {
                    name: settings.cookie.name.clone(),
                    domain: settings.cookie.domain.clone(),
                    max_age: settings.cookie.expire,
                },
                oidc,
                signer,
                signing_key_pem: settings.signing_key_pem.clone(),
            },
            warnings,
        ))
    }

    /// The session in the request's cookies: `None` for no cookie, a cookie that does not
    /// open (tampered, truncated, other key or host), an expired or a revoked session.
    pub fn open(
        &self,
        store: &dyn RevocationStore,
        host: &str,
        headers: &HeaderMap,
    ) -> Option<Session> {
        let key = self.key.as_ref()?;
        let text = self.jar.read_session(headers)?;
        let s: Session = key.open("session", self.jar.scope(host), &text)?;
        if s.expires <= now() || store.is_revoked(&s.id) {
            return None;
        }
        Some(s)
    }

    pub fn seal(&self, host: &str, s: &Session) -> Option<String> {
        self.key.as_ref()?.seal("session", self.jar.scope(host), s)
    }
}

/// Refreshes in progress or just done, by session id: concurrent requests of one session
/// share one refresh (a rotated refresh token can be used only once).
type RefreshCell = Arc<tokio::sync::OnceCell<Option<Session>>>;
type RefreshKey = ([u8; 16], u64);

#[derive(Default)]
pub struct Refreshes {
    /// (session id, expired ID token's `exp`) → (shared result, started at): one refresh per
    /// expiry, shared by the requests that carry the same old cookie.
    map: Mutex<HashMap<RefreshKey, (RefreshCell, u64)>>,
}

impl Refreshes {
    /// Refreshes `s` (once across concurrent callers); `None` means sign in again.
    pub async fn refresh(&self, oidc: &Arc<Oidc>, s: &Session) -> Option<Session> {
        let cell = {
            let Ok(mut m) = self.map.lock() else {
                return None;
            };
            let t = now();
            m.retain(|_, (_, at)| t.saturating_sub(*at) < 60);
            m.entry((s.id, s.id_token_exp))
                .or_insert_with(|| (Arc::new(tokio::sync::OnceCell::new()), t))
                .0
                .clone()
        };
        cell.get_or_init(|| async {
            match tokio::time::timeout(Duration::from_secs(15), oidc.refresh(s)).await {
                Ok(Ok(n)) => {
                    tracing::debug!("session refreshed");
                    Some(n)
                }
                Ok(Err(e)) => {
                    tracing::info!(error = %e, "refresh failed: the user signs in again");
                    None
                }
                Err(_) => None,
            }
        })
        .await
        .clone()
    }
}

/// A `Set-Cookie` value list to add to whatever response a request ends with.
pub type SetCookies = Vec<HeaderValue>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Identity;

    struct Revoked(Option<[u8; 16]>);
    impl RevocationStore for Revoked {
        fn revoke(&self, _: &[u8; 16], _: u64) -> Result<(), String> {
            Ok(())
        }
        fn is_revoked(&self, id: &[u8; 16]) -> bool {
            self.0 == Some(*id)
        }
    }

    fn auth() -> Auth {
        Auth {
            key: Some(CookieKey::new(&[3; 32]).unwrap()),
            jar: CookieJar {
                name: "_p".into(),
                domain: None,
                max_age: Duration::from_secs(60),
            },
            oidc: None,
            signer: Arc::new(Signer::new(None).unwrap().0),
            signing_key_pem: None,
        }
    }

    fn headers_for(a: &Auth, s: &Session) -> HeaderMap {
        let sealed = a.seal("h", s).unwrap();
        let mut h = HeaderMap::new();
        for v in a.jar.set_session(&sealed, &HeaderMap::new()) {
            let pair = v.to_str().unwrap().split(';').next().unwrap().to_string();
            h.append(http::header::COOKIE, pair.parse().unwrap());
        }
        h
    }

    fn session(expires: u64) -> Session {
        Session {
            id: [5; 16],
            identity: Identity {
                sub: "u".into(),
                ..Default::default()
            },
            expires,
            id_token_exp: expires,
            refresh_token: None,
            id_token: None,
        }
    }

    #[test]
    fn expired_and_revoked_sessions_are_no_session() {
        let a = auth();
        let live = headers_for(&a, &session(now() + 60));
        assert!(a.open(&Revoked(None), "h", &live).is_some());
        assert!(
            a.open(&Revoked(Some([5; 16])), "h", &live).is_none(),
            "revoked"
        );
        assert!(
            a.open(&Revoked(None), "other", &live).is_none(),
            "other host"
        );
        let expired = headers_for(&a, &session(now() - 1));
        assert!(a.open(&Revoked(None), "h", &expired).is_none(), "expired");
    }
}
