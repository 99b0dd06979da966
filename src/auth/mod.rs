//! Sign-in: OpenID Connect, the session cookie, server-side revocation, the identity
//! assertion for upstreams, and the `/.portcullis/` endpoints.

pub mod assertion;
pub mod oidc;
pub mod revoked;
pub mod session;
pub mod shared_store;

use foldhash::HashMap;
use http::{HeaderMap, HeaderValue};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::now;
use crate::config::settings::Settings;
use crate::workers::PerWorker;
use assertion::Signer;
use oidc::Oidc;
use revoked::RevocationStore;
use session::{CookieJar, CookieKey, Session, SignOutHint, SignedIn};

/// Sign-in state built from one config. Parts that must outlive a reload (the IdP
/// discovery, a generated signing key) are carried over from the previous one when their
/// settings did not change.
pub struct Auth {
    pub key: Option<CookieKey>,
    /// Sessions this config opened recently, by [`Auth::tail_key`] (see [`Auth::open`]).
    opened: PerWorker<Mutex<HashMap<u64, Opened>>>,
    /// Keys the `opened` maps' hashes of cookie tails.
    tails: foldhash::fast::RandomState,
    pub jar: CookieJar,
    pub oidc: Option<Arc<Oidc>>,
    pub signer: Arc<Signer>,
    signing_key: Option<crate::config::keys::SigningKey>,
}

/// How long the CLI sign-in's code may wait for `portcullis tcp` to redeem it.
const CLI_CODE_TTL: u64 = 120;

/// The session, unless it has expired or been signed out.
fn live(s: Session, store: &dyn RevocationStore) -> Option<Arc<Session>> {
    if s.expires <= now() || store.is_revoked(&s.id) {
        return None;
    }
    Some(Arc::new(s))
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
        let signer = match prev {
            Some(p) if p.signing_key == settings.signing_key => p.signer.clone(),
            _ => {
                let (s, generated) = Signer::new(settings.signing_key.as_ref())?;
                if generated {
                    warnings.push("no signing_key: the assertion JWT is signed with a key made at start; upstreams verifying it must fetch /.well-known/portcullis/jwks.json again after a restart".into());
                }
                Arc::new(s)
            }
        };
        Ok((
            Auth {
                key,
                opened: PerWorker::default(),
                tails: foldhash::fast::RandomState::default(),
                jar: CookieJar::new(
                    &settings.cookie.name,
                    settings.cookie.domain.clone(),
                    settings.cookie.expire,
                ),
                oidc,
                signer,
                signing_key: settings.signing_key.clone(),
            },
            warnings,
        ))
    }

    /// The session in the request's cookies: `None` for no cookie, a cookie that does not
    /// open (tampered, truncated, other key or host), an expired or a revoked session.
    ///
    /// A browser sends the same cookie on every request, so each worker keeps the sessions it
    /// opened by the cookie's exact text (and the host scope it was opened for): the AEAD
    /// makes identical text the identical session, and a cookie that does not open is never
    /// kept. Expiry and revocation are still checked on every request. The cache belongs to
    /// this config, so a new `cookie_secret` starts empty.
    pub fn open(
        &self,
        store: &dyn RevocationStore,
        host: &str,
        headers: &HeaderMap,
    ) -> Option<Arc<Session>> {
        let key = self.key.as_ref()?;
        let text = self.jar.read_session(headers)?;
        let scope = self.jar.scope(host);
        let tail = self.tail_key(&text);
        let cached = self.opened.get().lock().ok().and_then(|m| {
            m.get(&tail)
                .filter(|o| *o.text == *text && *o.scope == *scope)
                .map(|o| o.session.clone())
        });
        let s = match cached {
            Some(s) => s,
            None => {
                let s: Arc<Session> = Arc::new(key.open("session", scope, &text)?);
                if let Ok(mut m) = self.opened.get().lock() {
                    if m.len() >= OPENED_MAX {
                        m.clear();
                    }
                    let o = Opened {
                        text: text.into_owned().into_boxed_slice(),
                        scope: scope.into(),
                        session: s.clone(),
                    };
                    m.insert(tail, o);
                }
                s
            }
        };
        if s.expires <= now() || store.is_revoked(&s.id) {
            return None;
        }
        Some(s)
    }

    /// What the `opened` maps are keyed by: the cookie's length and its last 32 bytes, which
    /// end in the AEAD tag (random for every seal), so a 3 KB cookie is not hashed whole on
    /// every request. Equal keys are only a hint: the whole text is compared before an entry
    /// is used, and only cookies that opened are ever kept.
    fn tail_key(&self, b: &[u8]) -> u64 {
        std::hash::BuildHasher::hash_one(&self.tails, (b.len(), &b[b.len().saturating_sub(32)..]))
    }

    pub fn seal(&self, host: &str, s: &Session) -> Option<String> {
        self.key.as_ref()?.seal("session", self.jar.scope(host), s)
    }

    /// A session as `portcullis tcp` holds it: sealed for purpose `cli`, so it never opens
    /// as a cookie (nor a cookie as one), and for exactly the host whose TCP route it serves
    /// (never the `cookie_domain`: a token minted on one host does not open another's routes).
    /// Its id is the browser session's, so signing out there ends it too.
    pub fn seal_cli(&self, host: &str, s: &Session) -> Option<String> {
        self.key.as_ref()?.seal("cli", host, s)
    }

    /// The session in a `Proxy-Authorization: Portcullis TOKEN` header, unless it has
    /// expired or been signed out.
    pub fn open_cli(
        &self,
        store: &dyn RevocationStore,
        host: &str,
        token: &str,
    ) -> Option<Arc<Session>> {
        let s: Session = self.key.as_ref()?.open("cli", host, token)?;
        live(s, store)
    }

    /// The code the CLI sign-in page sends to `portcullis tcp`'s loopback listener:
    /// the session, bound to the PKCE challenge the CLI made (RFC 7636, S256), for two
    /// minutes. Only the holder of the verifier turns it into a session.
    pub fn seal_cli_code(&self, host: &str, s: &Session, challenge: &str) -> Option<String> {
        let code = session::CliCode {
            session: s.clone(),
            challenge: challenge.to_string(),
            expires: now() + CLI_CODE_TTL,
        };
        self.key.as_ref()?.seal("cli-code", host, &code)
    }

    /// The session a code carries, when `verifier` is the one its challenge was made from.
    pub fn open_cli_code(
        &self,
        store: &dyn RevocationStore,
        host: &str,
        code: &str,
        verifier: &str,
    ) -> Option<Arc<Session>> {
        let c: session::CliCode = self.key.as_ref()?.open("cli-code", host, code)?;
        if c.expires <= now() || !session::pkce_matches(verifier, &c.challenge) {
            return None;
        }
        live(c.session, store)
    }

    /// The `Set-Cookie` values that store a session just made or refreshed: the session
    /// (chunked, on every request) and its ID token in the cookie only sign-out is sent.
    pub fn session_cookies(
        &self,
        host: &str,
        new: &SignedIn,
        headers: &HeaderMap,
    ) -> Option<SetCookies> {
        let mut out = self
            .jar
            .set_session(&self.seal(host, &new.session)?, headers);
        let hint = SignOutHint {
            session: new.session.id,
            id_token: new.id_token.clone(),
        };
        let sealed = self
            .key
            .as_ref()?
            .seal("signout", self.jar.scope(host), &hint);
        out.extend(self.jar.set_hint(sealed.as_deref()));
        Some(out)
    }

    /// The ID token to send the IdP as `id_token_hint` when session `s` signs out: the one in
    /// the request's sign-out cookie, if that opens and names this session.
    pub fn sign_out_hint(&self, host: &str, s: &Session, headers: &HeaderMap) -> Option<String> {
        let text = crate::http::cookie::cookie(headers, &self.jar.hint_name())?;
        let hint: SignOutHint = self
            .key
            .as_ref()?
            .open("signout", self.jar.scope(host), text)?;
        (hint.session == s.id).then_some(hint.id_token)
    }
}

/// Opened sessions kept per worker; past this many the worker starts over (each is then
/// opened once more). A session with its tokens is 1–3 KB.
const OPENED_MAX: usize = 256;

/// A session opened from a cookie's text, for the host scope it was sealed for.
struct Opened {
    text: Box<[u8]>,
    scope: Box<str>,
    session: Arc<Session>,
}

/// Refreshes in progress or just done, by session id: concurrent requests of one session
/// share one refresh (a rotated refresh token can be used only once).
type RefreshCell = Arc<tokio::sync::OnceCell<Option<SignedIn>>>;
type RefreshKey = ([u8; 16], u64);

#[derive(Default)]
pub struct Refreshes {
    /// (session id, expired ID token's `exp`) → (shared result, kept until): one refresh per
    /// expiry, shared by the requests that carry the same old cookie. A failed one is kept a
    /// minute; a successful one until the ID token it brought expires, so that a browser
    /// whose open WebSocket refreshed its session (a socket sets no cookie) gets the same
    /// result with its next request rather than spending the refresh token again.
    map: Mutex<HashMap<RefreshKey, (RefreshCell, u64)>>,
}

impl Refreshes {
    /// Refreshes `s` (once across concurrent callers); `None` means sign in again. A result
    /// kept from an earlier refresh whose ID token has expired since (an open WebSocket went on
    /// refreshing the session) is followed to the refresh after it, so a request carrying an
    /// old cookie gets the latest word of the IdP, a refusal included.
    pub async fn refresh(&self, oidc: &Arc<Oidc>, s: &Session) -> Option<SignedIn> {
        let mut fresh = self.refresh_once(oidc, s).await?;
        // Bounded: each step is a later ID token of the same session.
        for _ in 0..8 {
            if fresh.session.id_token_exp > now() || fresh.session.refresh_token.is_none() {
                return Some(fresh);
            }
            fresh = self.refresh_once(oidc, &fresh.session).await?;
        }
        None
    }

    async fn refresh_once(&self, oidc: &Arc<Oidc>, s: &Session) -> Option<SignedIn> {
        let cell = {
            let Ok(mut m) = self.map.lock() else {
                return None;
            };
            let t = now();
            m.retain(|_, (_, until)| *until > t);
            m.entry((s.id, s.id_token_exp))
                .or_insert_with(|| (Arc::new(tokio::sync::OnceCell::new()), t + 60))
                .0
                .clone()
        };
        let fresh = cell
            .get_or_init(|| async {
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
            .clone();
        if let (Some(n), Ok(mut m)) = (&fresh, self.map.lock()) {
            if let Some(e) = m.get_mut(&(s.id, s.id_token_exp)) {
                e.1 = e.1.max(n.session.id_token_exp.min(n.session.expires) + 60);
            }
        }
        fresh
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
            opened: PerWorker::default(),
            tails: foldhash::fast::RandomState::default(),
            key: Some(CookieKey::new(&[3; 32]).unwrap()),
            jar: CookieJar::new("_p", None, Duration::from_secs(60)),
            oidc: None,
            signer: Arc::new(Signer::new(None).unwrap().0),
            signing_key: None,
        }
    }

    fn headers_for(a: &Auth, s: &Session) -> HeaderMap {
        let sealed = a.seal("h", s).unwrap();
        sent_back(&a.jar.set_session(&sealed, &HeaderMap::new()))
    }

    /// The Cookie headers a browser sends after these `Set-Cookie`s (any path).
    fn sent_back(set: &[HeaderValue]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in set {
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
            }
            .into(),
            expires,
            id_token_exp: expires,
            refresh_token: None,
        }
    }

    #[test]
    fn the_id_token_rides_only_in_the_sign_out_cookie_and_serves_only_its_own_session() {
        let a = auth();
        let new = SignedIn {
            session: session(now() + 60),
            id_token: "header.payload.signature".into(),
        };
        let set = a.session_cookies("h", &new, &HeaderMap::new()).unwrap();
        let names: Vec<&str> = set
            .iter()
            .map(|v| v.to_str().unwrap().split('=').next().unwrap())
            .collect();
        assert_eq!(names, ["__Host-_p", "__Secure-_p_signout"]);
        let every_request = sent_back(&set[..1]);
        assert_eq!(
            a.open(&Revoked(None), "h", &every_request).as_deref(),
            Some(&new.session)
        );
        assert_eq!(a.sign_out_hint("h", &new.session, &every_request), None);
        let at_sign_out = sent_back(&set);
        assert_eq!(
            a.sign_out_hint("h", &new.session, &at_sign_out).as_deref(),
            Some("header.payload.signature")
        );
        let other = Session {
            id: [6; 16],
            ..new.session.clone()
        };
        assert_eq!(
            a.sign_out_hint("h", &other, &at_sign_out),
            None,
            "a hint left from another session"
        );
        assert_eq!(
            a.sign_out_hint("other", &new.session, &at_sign_out),
            None,
            "other host"
        );
        // Sealed for its purpose: the hint cookie's text is no session, the session's no hint.
        let value = |v: &HeaderValue| {
            let pair = v.to_str().unwrap().split(';').next().unwrap();
            pair.split_once('=').unwrap().1.to_string()
        };
        let session_text = value(&set[0]);
        let session_text = session_text.strip_prefix("v1.1.").unwrap();
        let swapped = sent_back(&[
            format!("__Host-_p=v1.1.{}", value(&set[1]))
                .parse()
                .unwrap(),
            format!("__Secure-_p_signout={session_text}")
                .parse()
                .unwrap(),
        ]);
        assert!(a.open(&Revoked(None), "h", &swapped).is_none());
        assert_eq!(a.sign_out_hint("h", &new.session, &swapped), None);
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

    #[test]
    fn a_cookie_with_a_kept_ones_tail_is_not_taken_for_it() {
        let a = auth();
        let h = headers_for(&a, &session(now() + 60));
        assert!(a.open(&Revoked(None), "h", &h).is_some());
        // Same length, same last 32 bytes: the same cache key, but another text.
        let text = h[http::header::COOKIE].to_str().unwrap().to_string();
        let i = "__Host-_p=v1.1.".len() + 4;
        let flipped = if &text[i..=i] == "A" { "B" } else { "A" };
        let forged = format!("{}{flipped}{}", &text[..i], &text[i + 1..]);
        let mut f = HeaderMap::new();
        f.insert(http::header::COOKIE, forged.parse().unwrap());
        let a_text = a.jar.read_session(&h).unwrap();
        let f_text = a.jar.read_session(&f).unwrap();
        assert_eq!(a.tail_key(&a_text), a.tail_key(&f_text));
        assert!(a.open(&Revoked(None), "h", &f).is_none());
    }

    #[test]
    fn a_kept_session_is_still_checked_for_expiry_and_revocation() {
        let a = auth();
        let h = headers_for(&a, &session(now() + 1));
        let first = a.open(&Revoked(None), "h", &h).expect("opens");
        let again = a.open(&Revoked(None), "h", &h).expect("opens again");
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second request reuses the opened session"
        );
        assert!(
            a.open(&Revoked(Some([5; 16])), "h", &h).is_none(),
            "revoked after it was kept"
        );
        assert!(
            a.open(&Revoked(None), "other", &h).is_none(),
            "kept for another host scope"
        );
        std::thread::sleep(Duration::from_millis(2100));
        assert!(
            a.open(&Revoked(None), "h", &h).is_none(),
            "expired after it was kept"
        );
    }

    #[test]
    fn kept_sessions_are_bounded_and_tampered_cookies_are_never_kept() {
        let a = auth();
        let kept = |a: &Auth| a.opened.get().lock().map(|m| m.len()).unwrap_or(0);
        let mut s = session(now() + 60);
        for i in 0..(OPENED_MAX + 10) {
            s.id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            assert!(a.open(&Revoked(None), "h", &headers_for(&a, &s)).is_some());
            assert!(kept(&a) <= OPENED_MAX);
        }
        let before = kept(&a);
        let mut h = headers_for(&a, &s);
        let v = h
            .get(http::header::COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let mid = v.len() - 20;
        let c = if &v[mid..=mid] == "A" { "B" } else { "A" };
        let flipped = format!("{}{c}{}", &v[..mid], &v[mid + 1..]);
        h.insert(http::header::COOKIE, flipped.parse().unwrap());
        assert!(a.open(&Revoked(None), "h", &h).is_none(), "tampered");
        assert_eq!(kept(&a), before, "a cookie that does not open is not kept");
    }
}
