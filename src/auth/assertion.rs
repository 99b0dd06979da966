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
}

/// An EC P-256 private key for `signing_key`, checked and held as PKCS#8 DER.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// What to run for a key Portcullis takes (README "signing_key").
const MAKE_ONE: &str =
    "make one with `openssl ecparam -name prime256v1 -genkey -noout -out signing_key.pem`";

impl SigningKey {
    /// Reads a PEM EC P-256 private key, SEC1 (`EC PRIVATE KEY`, what `openssl ecparam -genkey`
    /// writes) or PKCS#8 (`PRIVATE KEY`); anything else is refused saying what it is.
    pub fn from_pem(pem: &str) -> Result<SigningKey, String> {
        use aws_lc_rs::signature::{
            EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING as P256,
            ECDSA_P384_SHA384_FIXED_SIGNING as P384, ECDSA_P521_SHA512_FIXED_SIGNING as P521,
        };
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
        if pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
            || pem.contains("Proc-Type: 4,ENCRYPTED")
        {
            return Err("the key is encrypted; Portcullis needs it unencrypted (`openssl pkcs8 -topk8 -nocrypt -in KEY -out signing_key.pem`)".into());
        }
        let key = match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
            Ok(k) => k,
            Err(_) if SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).is_ok() => {
                return Err(format!(
                    "this is a public key; signing_key is the private key ({MAKE_ONE})"
                ))
            }
            Err(_) => return Err(format!("no PEM private key found ({MAKE_ONE})")),
        };
        let other = |what: &str| {
            Err(format!(
                "this is {what}; signing_key must be an EC P-256 key (ES256) ({MAKE_ONE})"
            ))
        };
        let der = match &key {
            PrivateKeyDer::Pkcs1(_) => return other("an RSA key"),
            PrivateKeyDer::Sec1(k) => k.secret_sec1_der(),
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der(),
            _ => return other("a key of a kind Portcullis does not read"),
        };
        if let Ok(pair) = EcdsaKeyPair::from_private_key_der(&P256, der) {
            let pkcs8 = pair
                .to_pkcs8v1()
                .map_err(|_| "the EC P-256 key cannot be used".to_string())?;
            return Ok(SigningKey(pkcs8.as_ref().to_vec()));
        }
        if EcdsaKeyPair::from_private_key_der(&P384, der).is_ok() {
            return other("an EC P-384 key");
        }
        if EcdsaKeyPair::from_private_key_der(&P521, der).is_ok() {
            return other("an EC P-521 key");
        }
        if aws_lc_rs::rsa::KeyPair::from_pkcs8(der).is_ok() {
            return other("an RSA key");
        }
        if Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).is_ok() {
            return other("an Ed25519 key");
        }
        other("not an EC P-256 private key (another curve or algorithm, or a damaged key)")
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
            Some(k) => (k.0.clone(), false),
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
                if now.saturating_sub(t.iat) < REUSE && same_origin && *t.aud == *audience {
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
