//! Who the user is, as the policy sees it: built from a verified ID token.

use bytes::Bytes;
use http::HeaderValue;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// A claim value: strings as they are, other scalars in their JSON spelling.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ClaimValue {
    Str(String),
    List(Vec<String>),
}

/// The signed-in user. `email` is only set when it is a well-formed address (exactly one `@`,
/// no spaces or control characters, a domain without a trailing dot), lower-cased.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// The IdP's issuer URL.
    pub iss: String,
    /// The subject (`sub`): stable and unique at the issuer.
    pub sub: String,
    pub email: Option<String>,
    /// `None` when the IdP does not say; only an explicit `false` fails email/domain criteria.
    pub email_verified: Option<bool>,
    pub groups: Vec<String>,
    pub claims: BTreeMap<String, ClaimValue>,
    /// Header values made from this identity, made on first use: a signed-in user's requests
    /// share them (the per-worker session cache keeps the identity). Not part of the session
    /// cookie; an identity is not changed once a request has used it.
    #[serde(skip)]
    pub header_values: HeaderValues,
}

/// The identity's values as request headers (`None`: absent, or not a valid header value).
#[derive(Debug)]
pub struct Values {
    /// The [usable](Identity::usable_email) email only.
    pub email: Option<HeaderValue>,
    pub sub: Option<HeaderValue>,
    /// Comma-joined.
    pub groups: Option<HeaderValue>,
}

/// Made once per identity, on first use.
#[derive(Default)]
pub struct HeaderValues(OnceLock<Values>);

impl Clone for HeaderValues {
    /// Empty: a copy may be changed before it is used, so it makes its own.
    fn clone(&self) -> Self {
        HeaderValues::default()
    }
}

/// A cache: never what makes two identities differ.
impl PartialEq for HeaderValues {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for HeaderValues {}

impl std::fmt::Debug for HeaderValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderValues")
    }
}

/// A header value that shares one buffer with its clones (no allocation per request).
fn shared_value(s: String) -> Option<HeaderValue> {
    let v = HeaderValue::from_maybe_shared(Bytes::from(s)).ok()?;
    // Vec-backed bytes become shareable at their first clone: do it now, once.
    Some(v.clone())
}

impl Identity {
    /// The email if the policy may use it.
    pub fn usable_email(&self) -> Option<&str> {
        if self.email_verified == Some(false) {
            return None;
        }
        self.email.as_deref()
    }

    /// This identity's header values (made at the first call).
    pub fn header_values(&self) -> &Values {
        self.header_values.0.get_or_init(|| {
            let made = Values {
                // An email the policy may not use is not passed on as identity either.
                email: self
                    .usable_email()
                    .map(str::to_string)
                    .and_then(shared_value),
                sub: shared_value(self.sub.clone()),
                groups: shared_value(self.groups.join(",")),
            };
            if made.sub.is_none() || made.groups.is_none() {
                tracing::warn!(sub = ?self.sub, "a claim cannot be a header value; it is not sent");
            }
            made
        })
    }

    /// The domain part of a usable email.
    pub fn email_domain(&self) -> Option<&str> {
        // The first `@`, as `split_once` would find it, by `memchr` (once per request).
        self.usable_email()
            .and_then(|e| memchr::memchr(b'@', e.as_bytes()).map(|i| &e[i + 1..]))
    }
}

/// Checks and lower-cases an email claim; `None` for anything that is not one plain address.
pub fn normalize_email(raw: &str) -> Option<String> {
    let (local, domain) = raw.split_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') {
        return None;
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    if domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
        || !domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
    {
        return None;
    }
    Some(raw.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::{normalize_email, Identity};

    #[test]
    fn header_values_are_made_once_and_shared_and_bad_ones_left_out() {
        let id = Identity {
            sub: "u1".into(),
            email: Some("a@b.test".into()),
            groups: vec!["staff".into(), "ops".into()],
            ..Default::default()
        };
        let v = id.header_values();
        assert_eq!(
            v.email.as_ref().map(|v| v.as_bytes()),
            Some(&b"a@b.test"[..])
        );
        assert_eq!(v.sub.as_ref().map(|v| v.as_bytes()), Some(&b"u1"[..]));
        assert_eq!(
            v.groups.as_ref().map(|v| v.as_bytes()),
            Some(&b"staff,ops"[..])
        );
        // The second call hands out the same bytes: nothing is made again.
        let again = id.header_values();
        assert!(std::ptr::eq(v, again));
        let (a, b) = (v.groups.clone(), again.groups.clone());
        assert_eq!(
            a.map(|v| v.as_bytes().as_ptr()),
            b.map(|v| v.as_bytes().as_ptr())
        );
        // A copy of the identity makes its own (it may have been changed first).
        let mut copy = id.clone();
        copy.groups = vec!["other".into()];
        assert_eq!(
            copy.header_values().groups.as_ref().map(|v| v.as_bytes()),
            Some(&b"other"[..])
        );
        assert_eq!(
            copy,
            copy.clone(),
            "the cache never makes identities differ"
        );
        // A claim that cannot be a header value is not sent.
        let bad = Identity {
            sub: "u\r\nx-admin: 1".into(),
            groups: vec!["a\nb".into()],
            ..Default::default()
        };
        assert!(bad.header_values().sub.is_none());
        assert!(bad.header_values().groups.is_none());
        assert!(bad.header_values().email.is_none());
    }

    #[test]
    fn malformed_emails_are_not_emails() {
        for bad in [
            "eve@evil.test@corp.test",
            "eve",
            "@corp.test",
            "eve@",
            "eve@corp.test.",
            "eve@corp.test ",
            " eve@corp.test",
            "eve@corp..test",
            "eve@.corp.test",
            "eve@corp.test\n",
            "eve@corp/test",
        ] {
            assert_eq!(normalize_email(bad), None, "{bad:?}");
        }
        assert_eq!(
            normalize_email("Alice@Example.COM").as_deref(),
            Some("alice@example.com")
        );
    }
}
