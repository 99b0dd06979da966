//! Who the user is, as the policy sees it: built from a verified ID token.

use std::collections::BTreeMap;

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
}

impl Identity {
    /// The email if the policy may use it.
    pub fn usable_email(&self) -> Option<&str> {
        if self.email_verified == Some(false) {
            return None;
        }
        self.email.as_deref()
    }

    /// The domain part of a usable email.
    pub fn email_domain(&self) -> Option<&str> {
        self.usable_email()
            .and_then(|e| e.split_once('@'))
            .map(|(_, d)| d)
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
    use super::normalize_email;

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
