//! The session cookie: authenticated encryption (AES-256-GCM, key from `cookie_secret`),
//! bound to its host (or `cookie_domain`), chunked when large, expiring. A tampered,
//! truncated, expired, other-key or other-host cookie is simply no session.

use crate::http::cookie::{conflicting, cookie, cookie_pairs, unique_cookie_bytes};
use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use http::header::{HeaderMap, HeaderValue};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::policy::Identity;

/// Largest cookie value written in one piece; browsers allow ~4 KB per cookie with its name
/// and attributes.
pub const CHUNK: usize = 3800;
/// At most this many chunks are read or written (a session is never that large).
pub const MAX_CHUNKS: usize = 8;
const VERSION: &str = "v1";
/// Seconds a sign-in may take, from leaving for the IdP to the callback.
pub const LOGIN_TTL: u64 = 600;
/// Sign-ins in progress at once in one browser: a sign-in started with this many login
/// cookies present, or a callback that sees more, expires all of them (so they never grow a
/// request past the header limit: each is at most about 3 KB, see `MAX_RETURN_TO`).
pub const MAX_LOGINS: usize = 8;

/// A signed-in session, as carried in the cookie.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Random id: sign-out revokes it server-side.
    pub id: [u8; 16],
    pub identity: Arc<Identity>,
    /// Unix seconds: the session ends then (`cookie_expire` after sign-in).
    pub expires: u64,
    /// Unix seconds: the ID token's `exp`; past it, the refresh token is used.
    pub id_token_exp: u64,
    pub refresh_token: Option<String>,
    // The ID token is not here: it is most of a session's size, and this cookie rides on
    // every request; it has a cookie of its own that only sign-out sees ([`SignOutHint`]).
    // A cookie sealed before then still opens: the token was the last field, and postcard
    // leaves bytes after the last field it reads unread.
}

/// `portcullis tcp`'s short-lived code: a session waiting for the CLI holding the PKCE
/// verifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CliCode {
    pub session: Session,
    /// `BASE64URL(SHA-256(verifier))`, without padding (RFC 7636 S256).
    pub challenge: String,
    /// Unix seconds.
    pub expires: u64,
}

/// A PKCE challenge as the CLI sends it: 43 base64url characters (a SHA-256).
pub fn valid_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `BASE64URL(SHA-256(verifier))` (RFC 7636 S256).
pub fn pkce_challenge(verifier: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    B64.encode(d.as_ref())
}

/// Does `verifier` hash to `challenge`? (In constant time: the challenge is not secret, but
/// nothing is gained by telling how much of it matched.)
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let made = pkce_challenge(verifier);
    made.len() == challenge.len()
        && made
            .bytes()
            .zip(challenge.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A session just made (callback) or refreshed, with the ID token the IdP gave for it.
#[derive(Clone, Debug)]
pub struct SignedIn {
    pub session: Session,
    pub id_token: String,
}

/// What RP-initiated logout sends the IdP as `id_token_hint`: the session's ID token, sealed
/// in its own cookie whose `Path` is the sign-out endpoint, so no other request carries it.
/// It names its session: a hint left from another session is not used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignOutHint {
    pub session: [u8; 16],
    pub id_token: String,
}

impl Session {
    pub fn id_string(&self) -> String {
        B64.encode(self.id)
    }
}

/// The short-lived state of one sign-in, in its own cookie until the callback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// Where to go after sign-in: a path (and query) on this host.
    pub return_to: String,
    pub expires: u64,
}

/// Seals and opens cookies with the key from `cookie_secret`.
pub struct CookieKey {
    key: RandomizedNonceKey,
}

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

impl CookieKey {
    pub fn new(secret: &[u8; 32]) -> Result<CookieKey, String> {
        RandomizedNonceKey::new(&AES_256_GCM, secret)
            .map(|key| CookieKey { key })
            .map_err(|_| "unusable cookie key".to_string())
    }

    /// Encrypts `value` for `purpose` (session/login) at `scope` (host or cookie domain).
    pub fn seal<T: Serialize>(&self, purpose: &str, scope: &str, value: &T) -> Option<String> {
        let mut buf = postcard::to_stdvec(value).ok()?;
        let aad = format!("{VERSION}|{purpose}|{scope}");
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(aad.as_bytes()), &mut buf)
            .ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&buf);
        Some(B64.encode(out))
    }

    /// Decrypts and checks a value sealed by [`seal`](Self::seal) with the same purpose and scope.
    /// `text` is bytes: a session cookie is read from the Cookie header as it came.
    pub fn open<T: DeserializeOwned>(
        &self,
        purpose: &str,
        scope: &str,
        text: &(impl AsRef<[u8]> + ?Sized),
    ) -> Option<T> {
        let text = text.as_ref();
        if text.len() > CHUNK * MAX_CHUNKS {
            return None;
        }
        let mut raw = B64.decode(text).ok()?;
        if raw.len() < NONCE_LEN + 16 {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&raw[..NONCE_LEN]).ok()?;
        let aad = format!("{VERSION}|{purpose}|{scope}");
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut raw[NONCE_LEN..])
            .ok()?;
        postcard::from_bytes(plain).ok()
    }
}

/// Cookie settings needed to read and write session cookies, and the names made from them.
///
/// Every name carries a cookie prefix that browsers enforce, so no other host can plant or
/// shadow one: without `cookie_domain` the session (and its chunks) is `__Host-NAME` (only
/// this exact host can set it: Secure, `Path=/`, no Domain); with `cookie_domain` it is
/// `__Secure-NAME`. A login cookie is always `__Host-NAME_csrf_STATE` (`Path=/`, this host
/// only: a login cookie planted from a sibling host would complete a sign-in the attacker
/// began, signing the victim in as the attacker). The sign-out cookie, whose path is the
/// sign-out endpoint, is `__Secure-NAME_signout` (it names its session: a planted one is not
/// used).
#[derive(Clone, Debug)]
pub struct CookieJar {
    /// `cookie_name`, without a prefix.
    pub name: String,
    pub domain: Option<String>,
    pub max_age: Duration,
    /// The session cookie's name (its chunks add `_1`, `_2`…).
    session: String,
    /// `__Host-` and `cookie_name`: the login cookies' names start so.
    host_only: String,
    /// `__Secure-` and `cookie_name`: the sign-out cookie's name.
    secure: String,
}

impl CookieJar {
    pub fn new(name: &str, domain: Option<String>, max_age: Duration) -> CookieJar {
        let prefix = if domain.is_some() {
            "__Secure-"
        } else {
            "__Host-"
        };
        CookieJar {
            session: format!("{prefix}{name}"),
            host_only: format!("__Host-{name}"),
            secure: format!("__Secure-{name}"),
            name: name.to_string(),
            domain,
            max_age,
        }
    }

    /// The session cookie's name, prefix included.
    pub fn session_name(&self) -> &str {
        &self.session
    }

    /// Scope a cookie is bound to: the cookie domain if one is set, else the exact host.
    pub fn scope<'a>(&'a self, host: &'a str) -> &'a str {
        self.domain.as_deref().unwrap_or(host)
    }

    /// The login cookie of the sign-in whose `state` this is: one per sign-in in progress, so
    /// sign-ins started in several tabs at once each complete.
    pub fn login_name(&self, state: &str) -> String {
        format!("{}_csrf_{state}", self.host_only)
    }

    /// Names of the login cookies a request carries (any state Portcullis could have made).
    pub fn login_cookies<'h>(&self, headers: &'h HeaderMap) -> Vec<&'h str> {
        let prefix = format!("{}_csrf_", self.host_only);
        cookie_pairs(headers)
            .filter_map(|(k, _)| std::str::from_utf8(k).ok())
            .filter(|k| k.strip_prefix(&prefix).is_some_and(valid_state))
            .collect()
    }

    /// The cookie holding the session's [`SignOutHint`].
    pub fn hint_name(&self) -> String {
        format!("{}_signout", self.secure)
    }

    /// Stores a session's sealed [`SignOutHint`], seen by the sign-out endpoint alone; one
    /// too large for one cookie is not kept (sign-out then goes without the hint), and expires
    /// the older one.
    pub fn set_hint(&self, sealed: Option<&str>) -> Option<HeaderValue> {
        let (value, max_age) = match sealed {
            Some(v) if v.len() <= CHUNK => (v, self.max_age.as_secs()),
            _ => ("", 0),
        };
        HeaderValue::from_str(&format!(
            "{}={value}{}",
            self.hint_name(),
            self.attrs(crate::paths::SIGN_OUT, max_age, true)
        ))
        .ok()
    }

    /// `; Path=…; Max-Age=…; Secure; HttpOnly; SameSite=Lax`, and `; Domain=` with
    /// `cookie_domain` when `shared` (a `__Host-` cookie has none: browsers refuse it with one;
    /// `domain` is `None` exactly when the session is `__Host-`).
    fn attrs(&self, path: &str, max_age: u64, shared: bool) -> String {
        let mut a = format!("; Path={path}; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax");
        if let Some(d) = self.domain.as_ref().filter(|_| shared) {
            a.push_str("; Domain=");
            a.push_str(d);
        }
        a
    }

    /// `Set-Cookie` values that store `sealed`, split into chunks, and expire leftover chunks
    /// of an older, larger session that the request still carried.
    pub fn set_session(&self, sealed: &str, headers: &HeaderMap) -> Vec<HeaderValue> {
        let max_age = self.max_age.as_secs();
        let parts: Vec<&str> = split_chunks(sealed);
        let mut out = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let (name, value) = if i == 0 {
                (
                    self.session.clone(),
                    format!("{VERSION}.{}.{part}", parts.len()),
                )
            } else {
                (format!("{}_{i}", self.session), (*part).to_string())
            };
            if let Ok(v) =
                HeaderValue::from_str(&format!("{name}={value}{}", self.attrs("/", max_age, true)))
            {
                out.push(v);
            }
        }
        for i in parts.len()..MAX_CHUNKS {
            let name = format!("{}_{i}", self.session);
            if i > 0 && cookie(headers, &name).is_some() {
                out.extend(HeaderValue::from_str(&format!(
                    "{name}={}",
                    self.attrs("/", 0, true)
                )));
            }
        }
        out
    }

    /// `Set-Cookie` values that remove the session (every chunk) and the login cookies the
    /// request carries.
    pub fn clear_all(&self, headers: &HeaderMap) -> Vec<HeaderValue> {
        let mut out = Vec::new();
        out.extend(HeaderValue::from_str(&format!(
            "{}={}",
            self.session,
            self.attrs("/", 0, true)
        )));
        for i in 1..MAX_CHUNKS {
            out.extend(HeaderValue::from_str(&format!(
                "{}_{i}={}",
                self.session,
                self.attrs("/", 0, true)
            )));
        }
        out.extend(self.set_hint(None));
        for name in self.login_cookies(headers) {
            out.extend(self.expire_login(name));
        }
        out
    }

    /// The session cookie's sealed text, reassembled from its chunks: bytes as they came
    /// (they are base64 when valid, and the AEAD decides that; no pass to check for UTF-8).
    /// A session name sent under two values (one planted by a sibling host, see
    /// [`unique_cookie_bytes`]) is no session.
    pub fn read_session<'h>(&self, headers: &'h HeaderMap) -> Option<Cow<'h, [u8]>> {
        let first = unique_cookie_bytes(headers, &self.session)?;
        let rest = first.strip_prefix(VERSION.as_bytes())?.strip_prefix(b".")?;
        let dot = memchr::memchr(b'.', rest)?;
        let (n, head) = (&rest[..dot], &rest[dot + 1..]);
        let n: usize = std::str::from_utf8(n).ok()?.parse().ok()?;
        if n == 0 || n > MAX_CHUNKS {
            return None;
        }
        if n == 1 {
            return Some(Cow::Borrowed(head));
        }
        let mut all = Vec::with_capacity(n * CHUNK);
        all.extend_from_slice(head);
        for i in 1..n {
            all.extend_from_slice(unique_cookie_bytes(
                headers,
                &format!("{}_{i}", self.session),
            )?);
        }
        Some(Cow::Owned(all))
    }

    /// Does the request carry the session cookie (or one of its chunks) under two values?
    pub fn session_conflict(&self, headers: &HeaderMap) -> bool {
        conflicting(headers, &self.session)
            || (1..MAX_CHUNKS).any(|i| conflicting(headers, &format!("{}_{i}", self.session)))
    }

    /// Stores a sign-in's sealed state, for this host only (`__Host-`); it is never passed on to
    /// an upstream (`proxy::headers` strips Portcullis's cookies).
    pub fn set_login(&self, state: &str, sealed: &str) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!(
            "{}={sealed}{}",
            self.login_name(state),
            self.attrs("/", LOGIN_TTL, false)
        ))
        .ok()
    }

    /// Expires the login cookie named `name`.
    pub fn expire_login(&self, name: &str) -> Option<HeaderValue> {
        HeaderValue::from_str(&format!("{name}={}", self.attrs("/", 0, false))).ok()
    }
}

fn split_chunks(s: &str) -> Vec<&str> {
    // Sealed text is base64 (ASCII), so byte offsets are char boundaries.
    let mut v = Vec::new();
    let mut rest = s;
    while rest.len() > CHUNK {
        let (a, b) = rest.split_at(CHUNK);
        v.push(a);
        rest = b;
    }
    v.push(rest);
    v
}

/// Is this a `state` Portcullis could have made (and so a safe part of a cookie name)?
/// Made ones are 22 base64url characters.
pub fn valid_state(s: &str) -> bool {
    (16..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now;
    use http::header::COOKIE;

    fn key(b: u8) -> CookieKey {
        CookieKey::new(&[b; 32]).unwrap()
    }

    fn session(expires: u64, extra: usize) -> Session {
        Session {
            id: [7; 16],
            identity: Identity {
                iss: "https://idp".into(),
                sub: "u1".into(),
                email: Some("a@b.c".into()),
                email_verified: Some(true),
                groups: vec!["g".repeat(extra)],
                claims: Default::default(),
                ..Default::default()
            }
            .into(),
            expires,
            id_token_exp: expires,
            refresh_token: Some("r".into()),
        }
    }

    fn jar() -> CookieJar {
        CookieJar::new("_p", None, Duration::from_secs(60))
    }

    fn request_with(set: &[HeaderValue]) -> HeaderMap {
        let pairs: Vec<String> = set
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .filter(|p| !p.ends_with('='))
            .collect();
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&pairs.join("; ")).unwrap());
        h
    }

    #[test]
    fn seal_then_open_round_trips_only_with_the_same_key_purpose_and_scope() {
        let s = session(now() + 60, 3);
        let sealed = key(1).seal("session", "app.test", &s).unwrap();
        assert_eq!(
            key(1).open::<Session>("session", "app.test", &sealed),
            Some(s)
        );
        assert_eq!(
            key(2).open::<Session>("session", "app.test", &sealed),
            None,
            "other key"
        );
        assert_eq!(
            key(1).open::<Session>("session", "other.test", &sealed),
            None,
            "other host"
        );
        assert_eq!(
            key(1).open::<Session>("login", "app.test", &sealed),
            None,
            "other purpose"
        );
    }

    #[test]
    fn tampered_or_truncated_cookies_are_no_session() {
        let sealed = key(1)
            .seal("session", "h", &session(now() + 60, 3))
            .unwrap();
        let bytes = B64.decode(&sealed).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert_eq!(
                key(1).open::<Session>("session", "h", &B64.encode(&b)),
                None,
                "bit flip at {i}"
            );
        }
        for cut in [0, 1, 10, bytes.len() - 1] {
            assert_eq!(
                key(1).open::<Session>("session", "h", &B64.encode(&bytes[..cut])),
                None
            );
        }
        assert_eq!(
            key(1).open::<Session>("session", "h", "not base64 !!"),
            None
        );
    }

    #[test]
    fn big_sessions_are_chunked_and_reassembled_and_a_missing_chunk_is_no_session() {
        let jar = jar();
        let s = session(now() + 60, 9000);
        let sealed = key(1).seal("session", "h", &s).unwrap();
        let set = jar.set_session(&sealed, &HeaderMap::new());
        assert!(set.len() >= 3, "{} chunks", set.len());
        for v in &set {
            let v = v.to_str().unwrap();
            assert!(v.len() < 4096, "cookie too large for a browser");
            assert!(v.contains("; Secure; HttpOnly; SameSite=Lax"));
        }
        let req = request_with(&set);
        assert_eq!(jar.read_session(&req).as_deref(), Some(sealed.as_bytes()));
        // Drop the middle chunk.
        let cookie_line = req[COOKIE].to_str().unwrap().to_string();
        let without: Vec<&str> = cookie_line
            .split("; ")
            .filter(|c| !c.starts_with("__Host-_p_1="))
            .collect();
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(&without.join("; ")).unwrap());
        assert_eq!(jar.read_session(&h), None);
        // A small session after a big one expires the old chunks the browser still has.
        let small = key(1)
            .seal("session", "h", &session(now() + 60, 1))
            .unwrap();
        let set2 = jar.set_session(&small, &req);
        assert!(set2
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("__Host-_p_1=; ")
                && v.to_str().unwrap().contains("Max-Age=0")));
    }

    #[test]
    fn each_sign_in_in_progress_has_its_own_login_cookie() {
        let jar = jar();
        let (a, b) = ("AAAAAAAAAAAAAAAAAAAAAA", "bbbbbbbbbbbbbbbbbbbb-_");
        let set = [
            jar.set_login(a, "sealed-a").unwrap(),
            jar.set_login(b, "sealed-b").unwrap(),
        ];
        for v in &set {
            let v = v.to_str().unwrap();
            assert!(v.contains("; Path=/; Max-Age=600; Secure; HttpOnly"), "{v}");
        }
        let mut req = request_with(&set);
        req.append(
            COOKIE,
            HeaderValue::from_static(
                "__Host-_p=s; __Host-_p_1=t; __Host-_p_csrf=old; __Host-_p_csrf_a b=x; __Secure-_p_csrf_AAAAAAAAAAAAAAAAAAAAAA=x; _p_csrf_AAAAAAAAAAAAAAAAAAAAAA=x; other=x",
            ),
        );
        assert_eq!(cookie(&req, &jar.login_name(a)), Some("sealed-a"));
        assert_eq!(cookie(&req, &jar.login_name(b)), Some("sealed-b"));
        let mut names = jar.login_cookies(&req);
        names.sort_unstable();
        assert_eq!(names, [jar.login_name(a), jar.login_name(b)]);
        // Signing out expires the session's chunks and every login cookie the browser sent.
        let cleared: Vec<String> = jar
            .clear_all(&req)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for name in [jar.login_name(a), jar.login_name(b)] {
            assert!(
                cleared
                    .iter()
                    .any(|c| c.starts_with(&format!("{name}=; Path=/; Max-Age=0"))),
                "{name} not expired: {cleared:?}"
            );
        }
        assert!(cleared
            .iter()
            .any(|c| c.starts_with("__Host-_p=; Path=/; Max-Age=0")));
        assert!(
            cleared
                .iter()
                .any(|c| c
                    .starts_with("__Secure-_p_signout=; Path=/.portcullis/sign_out; Max-Age=0")),
            "sign-out hint not expired: {cleared:?}"
        );
    }

    #[test]
    fn the_sign_out_hint_is_sent_to_the_sign_out_path_alone_and_one_too_large_is_not_kept() {
        let jar = jar();
        let set = jar.set_hint(Some("sealed")).unwrap();
        assert_eq!(
            set.to_str().unwrap(),
            "__Secure-_p_signout=sealed; Path=/.portcullis/sign_out; Max-Age=60; Secure; HttpOnly; SameSite=Lax"
        );
        // Too large for one cookie: the older hint is expired instead (sign-out goes without).
        let big = "x".repeat(CHUNK + 1);
        for none in [jar.set_hint(Some(&big)), jar.set_hint(None)] {
            assert!(none
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("__Secure-_p_signout=; Path=/.portcullis/sign_out; Max-Age=0;"),);
        }
    }

    /// The session as sealed until the ID token got a cookie of its own.
    #[derive(Serialize)]
    struct SessionBefore {
        id: [u8; 16],
        identity: Arc<Identity>,
        expires: u64,
        id_token_exp: u64,
        refresh_token: Option<String>,
        id_token: Option<String>,
    }

    #[test]
    fn a_session_sealed_with_its_id_token_inside_still_opens() {
        let s = session(now() + 60, 3);
        let before = SessionBefore {
            id: s.id,
            identity: s.identity.clone(),
            expires: s.expires,
            id_token_exp: s.id_token_exp,
            refresh_token: s.refresh_token.clone(),
            id_token: Some("h.p.s".repeat(200)),
        };
        let sealed = key(1).seal("session", "h", &before).unwrap();
        assert_eq!(key(1).open::<Session>("session", "h", &sealed), Some(s));
    }

    #[test]
    fn every_cookie_name_carries_a_prefix_no_other_host_can_set() {
        let host_only = jar();
        let with_domain = CookieJar::new("_p", Some("example.com".into()), Duration::from_secs(60));
        let first = |v: &[HeaderValue]| v[0].to_str().unwrap().to_string();
        let s = first(&host_only.set_session("abc", &HeaderMap::new()));
        assert!(s.starts_with("__Host-_p=v1.1.abc; Path=/;"), "{s}");
        assert!(s.contains("; Secure") && !s.contains("Domain"), "{s}");
        let s = first(&with_domain.set_session("abc", &HeaderMap::new()));
        assert!(s.starts_with("__Secure-_p=v1.1.abc; Path=/;"), "{s}");
        assert!(s.ends_with("; Domain=example.com"), "{s}");
        for j in [&host_only, &with_domain] {
            assert_eq!(j.login_name("S"), "__Host-_p_csrf_S");
            assert_eq!(j.hint_name(), "__Secure-_p_signout");
            // A login cookie is this host's alone, also with cookie_domain: one planted from a
            // sibling host would finish a sign-in an attacker began.
            let login = j.set_login("S", "x").unwrap();
            let login = login.to_str().unwrap();
            assert!(login.starts_with("__Host-_p_csrf_S=x; Path=/;"), "{login}");
            assert!(!login.contains("Domain"), "{login}");
            let gone = j.expire_login("__Host-_p_csrf_S").unwrap();
            assert!(!gone.to_str().unwrap().contains("Domain"));
        }
        // Only the prefixed name is read: a cookie under the bare name (planted by a sibling
        // host with `Domain=`, or left by an earlier build) is no session and hides none.
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("_p=v1.1.planted"));
        assert!(host_only.read_session(&h).is_none());
        h.insert(
            COOKIE,
            HeaderValue::from_static(
                "_p=v1.1.planted; __Secure-_p=v1.1.other; __Host-_p=v1.1.mine",
            ),
        );
        assert_eq!(host_only.read_session(&h).as_deref(), Some(&b"mine"[..]));
        assert_eq!(with_domain.read_session(&h).as_deref(), Some(&b"other"[..]));
    }

    #[test]
    fn only_states_portcullis_could_make_name_a_login_cookie() {
        assert!(valid_state("AAAAAAAAAAAAAAAAAAAAAA"));
        assert!(valid_state("abcDEF0123456789-_xyzw"));
        for bad in [
            "",
            "short",
            "a=b;cccccccccccccccccc",
            "ééééééééééééééééééééé",
            "a b cccccccccccccccccc",
            &"x".repeat(65),
        ] {
            assert!(!valid_state(bad), "{bad:?}");
        }
    }
}
