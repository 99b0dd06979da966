//! `X-Portcullis-Jwt-Assertion`: an ES256 JWT telling the upstream who the user is, signed
//! with `signing_key` (or a key generated at start), verifiable with the JWKS Portcullis
//! serves at `/.well-known/portcullis/jwks.json`. Tokens are cached per session and route and
//! signed again when a minute has passed, when the route is reached under another origin
//! (its `iss`), or when a reload gave the route's place another upstream (its `aud`).

use base64::Engine;
use foldhash::{HashMap, HashMapExt};
use http::HeaderValue;
use jsonwebtoken::{jwk::Jwk, Algorithm, EncodingKey, Header};
use serde::Serialize;
use std::sync::Mutex;

use crate::clock::now;
use crate::config::keys::SigningKey;
use crate::policy::Identity;

/// How long an assertion is valid.
pub const LIFETIME: u64 = 5 * 60;
/// A cached assertion is reused while it is younger than this.
pub const REUSE: u64 = 60;
const CACHE_MAX: usize = 20_000;

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    groups: &'a [String],
    iat: u64,
    exp: u64,
}

type CacheKey = ([u8; 16], usize);

/// A signed token and what it was signed for, checked before it is reused: route indexes
/// change when a reload reorders routes (the signer outlives a reload), so the audience is
/// compared as well as the origin.
struct Cached {
    token: HeaderValue,
    iat: u64,
    iss: Box<str>,
    aud: Box<str>,
    /// Who the token speaks of: a session refreshed to another email or other groups keeps
    /// its id, and must not keep its old token.
    sub: Box<str>,
    email: Option<Box<str>>,
    groups: Vec<String>,
}

impl Cached {
    fn speaks_of(&self, id: &Identity) -> bool {
        *self.sub == *id.sub
            && self.email.as_deref() == id.usable_email()
            && self.groups == id.groups
    }
}

pub struct Signer {
    key: EncodingKey,
    kid: String,
    jwks: String,
    /// (session id, route index) → the token last signed for them.
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(kid={})", self.kid)
    }
}

impl Signer {
    /// From a checked key, or a fresh one (the bool says it was generated).
    pub fn new(key: Option<&SigningKey>) -> Result<(Signer, bool), String> {
        let (pkcs8, generated) = match key {
            Some(k) => (k.pkcs8().to_vec(), false),
            None => {
                let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| e.to_string())?;
                (kp.serialize_der(), true)
            }
        };
        let key = EncodingKey::from_ec_der(&pkcs8);
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)
            .map_err(|e| format!("signing_key: {e}"))?;
        let thumb = serde_json::to_vec(&jwk.algorithm).map_err(|e| e.to_string())?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &thumb);
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
        Ok((
            Signer {
                key,
                kid,
                jwks,
                cache: Mutex::new(HashMap::new()),
            },
            generated,
        ))
    }

    /// The JWKS document (public key only).
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// The assertion for this session on this route (cached; see the module docs). `iss` is
    /// the origin the request came to: `https` or not, and its authority (lower-cased).
    pub fn assertion(
        &self,
        session: &[u8; 16],
        route: usize,
        (https, authority): (bool, &str),
        audience: &str,
        id: &Identity,
    ) -> Option<HeaderValue> {
        let now = now();
        let scheme = if https { "https://" } else { "http://" };
        if let Ok(c) = self.cache.lock() {
            if let Some(t) = c.get(&(*session, route)) {
                let same_origin = t
                    .iss
                    .strip_prefix(scheme)
                    .is_some_and(|a| a.eq_ignore_ascii_case(authority));
                if now.saturating_sub(t.iat) < REUSE
                    && same_origin
                    && *t.aud == *audience
                    && t.speaks_of(id)
                {
                    return Some(t.token.clone());
                }
            }
        }
        let issuer = format!("{scheme}{}", authority.to_ascii_lowercase());
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = Claims {
            iss: &issuer,
            aud: audience,
            sub: &id.sub,
            email: id.usable_email(),
            groups: &id.groups,
            iat: now,
            exp: now + LIFETIME,
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key).ok()?;
        let v = HeaderValue::from_str(&token).ok()?;
        if let Ok(mut c) = self.cache.lock() {
            if c.len() >= CACHE_MAX {
                c.retain(|_, t| now.saturating_sub(t.iat) < REUSE);
                if c.len() >= CACHE_MAX / 2 {
                    // Over capacity with fresh entries only: start over rather than paying a
                    // full scan on every insert (each entry just gets signed once more).
                    c.clear();
                }
            }

            let t = Cached {
                token: v.clone(),
                iat: now,
                iss: issuer.into(),
                aud: audience.into(),
                sub: id.sub.as_str().into(),
                email: id.usable_email().map(Into::into),
                groups: id.groups.clone(),
            };
            c.insert((*session, route), t);
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assertion_is_signed_once_a_minute_per_session_and_route() {
        let (s, generated) = Signer::new(None).unwrap();
        assert!(generated);
        let id = Identity {
            sub: "x".into(),
            email: Some("x@example.com".into()),
            groups: vec!["admins".into()],
            ..Default::default()
        };
        let claims = |v: &HeaderValue| -> serde_json::Value {
            let part = v
                .to_str()
                .unwrap_or("")
                .split('.')
                .nth(1)
                .unwrap_or("")
                .to_string();
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap_or_default();
            serde_json::from_slice(&raw).unwrap_or_default()
        };
        let a = s.assertion(&[1; 16], 0, (true, "a"), "b", &id).unwrap();
        assert_eq!(
            s.assertion(&[1; 16], 0, (true, "a"), "b", &id),
            Some(a.clone()),
            "re-signed within a minute"
        );
        assert_ne!(
            s.assertion(&[2; 16], 0, (true, "a"), "b", &id),
            Some(a.clone()),
            "another session shares a token"
        );
        assert_ne!(
            s.assertion(&[1; 16], 1, (true, "a"), "b", &id),
            Some(a.clone()),
            "another route shares a token"
        );
        // A reload that reorders routes gives this index another upstream: signed again.
        let moved = s.assertion(&[1; 16], 0, (true, "a"), "c", &id);
        assert_ne!(moved, Some(a.clone()), "another audience shares a token");
        assert_eq!(
            moved.as_ref().map(|m| claims(m)["aud"].clone()),
            Some("c".into())
        );
        let a = s.assertion(&[1; 16], 0, (true, "a"), "b", &id).unwrap();
        // The same session refreshed to other groups, or another email: signed again.
        let mut fewer = id.clone();
        fewer.groups.clear();
        let refreshed = s.assertion(&[1; 16], 0, (true, "a"), "b", &fewer);
        assert_ne!(refreshed, Some(a.clone()), "a refresh kept the old groups");
        assert_eq!(
            refreshed.as_ref().map(|r| claims(r)["groups"].clone()),
            Some(serde_json::json!([]))
        );
        let mut renamed = id.clone();
        renamed.email = Some("other@example.com".into());
        assert_ne!(
            s.assertion(&[1; 16], 0, (true, "a"), "b", &renamed),
            s.assertion(&[1; 16], 0, (true, "a"), "b", &id),
            "a refresh kept the old email"
        );
        let a = s.assertion(&[1; 16], 0, (true, "a"), "b", &id).unwrap();
        // Reached under another origin: signed again, with that origin as `iss`.
        let other = s.assertion(&[1; 16], 0, (true, "A:8443"), "b", &id);
        assert_ne!(other, Some(a.clone()), "another origin shares a token");
        assert_eq!(claims(&a)["iss"], "https://a");
        assert_eq!(
            other.as_ref().map(|o| claims(o)["iss"].clone()),
            Some("https://a:8443".into())
        );
        assert!(
            s.jwks().contains("\"kty\":\"EC\"") && !s.jwks().contains("\"d\""),
            "JWKS must hold the public key only"
        );
    }

    #[test]
    fn a_configured_key_must_be_an_ec_p256_pem_and_others_are_named() {
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = SigningKey::from_pem(&p256.serialize_pem()).unwrap();
        let (_, generated) = Signer::new(Some(&key)).unwrap();
        assert!(!generated);
        let refused = |pem: &str| SigningKey::from_pem(pem).unwrap_err();
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(refused(&p384.serialize_pem()).contains("an EC P-384 key"));
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(refused(&ed.serialize_pem()).contains("an Ed25519 key"));
        assert!(refused(&p256.public_key_pem()).contains("a public key"));
        assert!(refused("not a key").contains("no PEM private key"));
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(refused(encrypted).contains("encrypted"));
        // The key is never printed.
        assert_eq!(format!("{key:?}"), "SigningKey(..)");
    }
}
