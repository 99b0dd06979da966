//! OpenID Connect: discovery (lazy, retried with backoff, never blocking start-up), the
//! authorization code flow with PKCE S256, ID-token verification (signature by JWKS, `iss`,
//! `aud`, `exp`, `nonce`), userinfo for missing claims, and refresh.

use arc_swap::ArcSwapOption;
use base64::Engine;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreIdToken};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    ProviderMetadataWithLogout, RedirectUrl, RefreshToken, Scope, TokenResponse,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::session::{LoginState, Session, SignedIn};
use crate::clock::now;
use crate::config::settings::IdpSettings;
use crate::policy::identity::normalize_email;
use crate::policy::{ClaimValue, Identity};

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// What discovery found.
pub struct Provider {
    client: Client,
    issuer: String,
    end_session: Option<url::Url>,
    userinfo: Option<url::Url>,
}

/// Why a sign-in step failed (shown as a generic page; the detail goes to the log).
#[derive(Debug)]
pub enum OidcError {
    Unavailable,
    Rejected(String),
}

impl std::fmt::Display for OidcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OidcError::Unavailable => f.write_str("the identity provider is not reachable"),
            OidcError::Rejected(s) => f.write_str(s),
        }
    }
}

/// The identity provider, as seen from here.
pub struct Oidc {
    pub settings: IdpSettings,
    http: openidconnect::reqwest::Client,
    provider: ArcSwapOption<Provider>,
    started: AtomicBool,
    last_rediscovery: AtomicU64,
    pub session_lifetime: Duration,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut c = e.source();
    while let Some(x) = c {
        s.push_str(": ");
        s.push_str(&x.to_string());
        c = x.source();
    }
    s
}

impl Oidc {
    pub fn new(settings: IdpSettings, session_lifetime: Duration) -> Result<Oidc, String> {
        let http = openidconnect::reqwest::ClientBuilder::new()
            // Following redirects would open the client to SSRF.
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the IdP client: {}", chain(&e)))?;
        Ok(Oidc {
            settings,
            http,
            provider: ArcSwapOption::empty(),
            started: AtomicBool::new(false),
            last_rediscovery: AtomicU64::new(0),
            session_lifetime,
        })
    }

    /// Starts discovery in the background (once); returns the provider if it is known.
    pub fn provider(self: &Arc<Self>) -> Option<Arc<Provider>> {
        if let Some(p) = self.provider.load_full() {
            return Some(p);
        }
        self.start();
        None
    }

    pub fn is_ready(&self) -> bool {
        self.provider.load().is_some()
    }

    /// Begins discovery, retried with backoff capped at 10 s until it succeeds.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(250);
            loop {
                let Some(oidc) = me.upgrade() else { return };
                match oidc.discover().await {
                    Ok(p) => {
                        tracing::info!(issuer = %p.issuer, "identity provider discovered");
                        oidc.provider.store(Some(Arc::new(p)));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(issuer = %oidc.settings.provider_url, error = %e, retry_in = ?delay, "identity provider discovery failed")
                    }
                }
                drop(oidc);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        });
    }

    async fn discover(&self) -> Result<Provider, String> {
        let issuer = IssuerUrl::new(
            self.settings
                .provider_url
                .as_str()
                .trim_end_matches('/')
                .to_string(),
        )
        .map_err(|e| e.to_string())?;
        let meta = ProviderMetadataWithLogout::discover_async(issuer.clone(), &self.http)
            .await
            .map_err(|e| chain(&e))?;
        let end_session = meta
            .additional_metadata()
            .end_session_endpoint
            .as_ref()
            .map(|u| u.url().clone());
        let userinfo = meta.userinfo_endpoint().map(|u| u.url().clone());
        let secret = (!self.settings.client_secret.is_empty())
            .then(|| ClientSecret::new(self.settings.client_secret.clone()));
        let client = CoreClient::from_provider_metadata(
            meta,
            ClientId::new(self.settings.client_id.clone()),
            secret,
        );
        Ok(Provider {
            client,
            issuer: issuer.to_string(),
            end_session,
            userinfo,
        })
    }

    /// Rediscovers (and so refetches the JWKS) when a token names a key we do not know;
    /// at most every 30 s.
    async fn rediscover(&self) -> Option<Arc<Provider>> {
        let now = now();
        let last = self.last_rediscovery.load(Ordering::Acquire);
        if now.saturating_sub(last) < 30
            || self
                .last_rediscovery
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return None;
        }
        match self.discover().await {
            Ok(p) => {
                let p = Arc::new(p);
                self.provider.store(Some(p.clone()));
                tracing::info!("identity provider keys refreshed");
                Some(p)
            }
            Err(e) => {
                tracing::warn!(error = %e, "refreshing the identity provider's keys failed");
                None
            }
        }
    }

    /// The IdP URL to send a browser to, and the login state to keep in its cookie.
    pub fn authorize(
        &self,
        p: &Provider,
        redirect_uri: &str,
        return_to: String,
    ) -> Result<(url::Url, LoginState), OidcError> {
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| OidcError::Rejected(e.to_string()))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let client = p.client.clone().set_redirect_uri(redirect);
        let mut req = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in &self.settings.scopes {
            if s != "openid" {
                req = req.add_scope(Scope::new(s.clone()));
            }
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        Ok((
            url,
            LoginState {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                pkce_verifier: verifier.secret().clone(),
                return_to,
                expires: now() + super::session::LOGIN_TTL,
            },
        ))
    }

    /// Exchanges the code and verifies the ID token; returns the new session.
    pub async fn callback(
        self: &Arc<Self>,
        redirect_uri: &str,
        code: &str,
        login: &LoginState,
    ) -> Result<SignedIn, OidcError> {
        let p = self.provider().ok_or(OidcError::Unavailable)?;
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| OidcError::Rejected(e.to_string()))?;
        let client = p.client.clone().set_redirect_uri(redirect);
        let resp = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Rejected(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Rejected(format!("code exchange: {}", chain(&e))))?;
        let id_token = resp
            .id_token()
            .ok_or_else(|| OidcError::Rejected("no ID token in the token response".into()))?;
        let nonce = Nonce::new(login.nonce.clone());
        let p = self.verified(p, id_token, Some(&nonce)).await?;
        let mut new = self
            .session_from(
                &p,
                id_token,
                resp.access_token().secret(),
                resp.refresh_token().map(|r| r.secret().clone()),
            )
            .await?;
        new.session.expires = now() + self.session_lifetime.as_secs();
        Ok(new)
    }

    /// Uses the refresh token; `None` means the user must sign in again.
    pub async fn refresh(self: &Arc<Self>, old: &Session) -> Result<SignedIn, OidcError> {
        let p = self.provider().ok_or(OidcError::Unavailable)?;
        let rt = old
            .refresh_token
            .as_ref()
            .ok_or_else(|| OidcError::Rejected("no refresh token".into()))?;
        let rt = RefreshToken::new(rt.clone());
        let resp = p
            .client
            .exchange_refresh_token(&rt)
            .map_err(|e| OidcError::Rejected(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Rejected(format!("refresh: {}", chain(&e))))?;
        let id_token = resp
            .id_token()
            .ok_or_else(|| OidcError::Rejected("no ID token after refresh".into()))?;
        let p = self.verified(p, id_token, None).await?;
        let refresh = resp
            .refresh_token()
            .map(|r| r.secret().clone())
            .or_else(|| old.refresh_token.clone());
        let mut new = self
            .session_from(&p, id_token, resp.access_token().secret(), refresh)
            .await?;
        let s = &mut new.session;
        if s.identity.sub != old.identity.sub {
            return Err(OidcError::Rejected(
                "refreshed ID token names another subject".into(),
            ));
        }
        s.id = old.id;
        s.expires = old.expires;
        Ok(new)
    }

    /// Verifies signature, `iss`, `aud`, `exp` and (at sign-in) `nonce`; refetches keys once
    /// when the token names an unknown one.
    async fn verified(
        &self,
        p: Arc<Provider>,
        token: &CoreIdToken,
        nonce: Option<&Nonce>,
    ) -> Result<Arc<Provider>, OidcError> {
        let check = |p: &Provider| -> Result<(), openidconnect::ClaimsVerificationError> {
            let verifier = p.client.id_token_verifier();
            match nonce {
                Some(n) => token.claims(&verifier, n).map(|_| ()),
                // Refreshed ID tokens need not repeat the nonce.
                None => token
                    .claims(&verifier, |_: Option<&Nonce>| Ok(()))
                    .map(|_| ()),
            }
        };
        match check(&p) {
            Ok(()) => Ok(p),
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(e)) => {
                let Some(newer) = self.rediscover().await else {
                    return Err(OidcError::Rejected(format!("ID token signature: {e}")));
                };
                check(&newer).map_err(|e| OidcError::Rejected(format!("ID token: {e}")))?;
                Ok(newer)
            }
            Err(e) => Err(OidcError::Rejected(format!("ID token: {e}"))),
        }
    }

    /// Builds the session from a verified ID token, asking userinfo for what it lacks.
    async fn session_from(
        &self,
        p: &Provider,
        token: &CoreIdToken,
        access_token: &str,
        refresh: Option<String>,
    ) -> Result<SignedIn, OidcError> {
        let raw = token.to_string();
        let mut claims =
            jwt_payload(&raw).ok_or_else(|| OidcError::Rejected("unreadable ID token".into()))?;
        let groups_claim = self.settings.groups_claim.as_str();
        let unsure_email = claims.contains_key("email") && !claims.contains_key("email_verified");
        if !claims.contains_key("email") || !claims.contains_key(groups_claim) || unsure_email {
            if let Some(ui) = &p.userinfo {
                match self.userinfo(ui, access_token).await {
                    Ok(extra) => {
                        // The userinfo `sub` must be the ID token's (OIDC Core 5.3.2).
                        if extra.get("sub") == claims.get("sub") {
                            merge_userinfo(&mut claims, extra);
                        } else {
                            tracing::warn!("userinfo answered for another subject; ignored");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "userinfo request failed; going on with the ID token's claims")
                    }
                }
            }
        }
        if claims.contains_key("_claim_names") && !claims.contains_key(groups_claim) {
            tracing::warn!("the IdP sent a group overage pointer instead of groups; `groups` criteria will not match this user");
        }
        let identity = identity_from(&p.issuer, &claims, groups_claim)
            .ok_or_else(|| OidcError::Rejected("the ID token has no subject".into()))?;
        let id_token_exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| OidcError::Rejected("no randomness".into()))?;
        Ok(SignedIn {
            session: Session {
                id,
                identity: Arc::new(identity),
                expires: 0,
                id_token_exp,
                refresh_token: refresh,
            },
            id_token: raw,
        })
    }

    async fn userinfo(
        &self,
        url: &url::Url,
        access_token: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let resp = self
            .http
            .get(url.clone())
            .bearer_auth(access_token)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| chain(&e))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let bytes = resp.bytes().await.map_err(|e| chain(&e))?;
        if bytes.len() > 256 * 1024 {
            return Err("userinfo answer too large".into());
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("userinfo is not JSON (signed userinfo is not supported): {e}"))
    }

    /// Where to send the browser at sign-out: the IdP's end-session endpoint (RP-initiated
    /// logout) when it has one.
    pub fn end_session_url(&self, id_token: Option<&str>, post_logout: &str) -> Option<url::Url> {
        let p = self.provider.load_full()?;
        let mut u = p.end_session.clone()?;
        {
            let mut q = u.query_pairs_mut();
            if let Some(t) = id_token {
                q.append_pair("id_token_hint", t);
            }
            q.append_pair("client_id", &self.settings.client_id);
            q.append_pair("post_logout_redirect_uri", post_logout);
        }
        Some(u)
    }
}

/// Adds what userinfo says to the ID token's claims, which win. `email_verified` is about one
/// address, so it comes from where the `email` came from: the token's own (or userinfo's, when
/// userinfo names the same address and the token did not say), or userinfo's with userinfo's
/// email — never the token's `true` for an address the token did not carry.
fn merge_userinfo(
    claims: &mut serde_json::Map<String, serde_json::Value>,
    mut extra: serde_json::Map<String, serde_json::Value>,
) {
    let verified = extra.remove("email_verified");
    if claims.contains_key("email") {
        // The same address however it is spelled: the policy compares emails normalized.
        let same = |v: Option<&serde_json::Value>| {
            v.and_then(serde_json::Value::as_str)
                .and_then(crate::policy::identity::normalize_email)
        };
        let same_address = same(extra.get("email")).is_some()
            && same(extra.get("email")) == same(claims.get("email"));
        if !claims.contains_key("email_verified") && same_address {
            if let Some(v) = verified {
                claims.insert("email_verified".into(), v);
            }
        }
    } else {
        claims.remove("email_verified");
        if extra.contains_key("email") {
            if let Some(v) = verified {
                claims.insert("email_verified".into(), v);
            }
        }
    }
    for (k, v) in extra {
        claims.entry(k).or_insert(v);
    }
}

/// The claims of a JWT whose signature was already verified.
fn jwt_payload(raw: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let payload = raw.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Claims that describe the token, not the user: not kept in the session.
const TOKEN_CLAIMS: &[&str] = &[
    "iss",
    "aud",
    "exp",
    "iat",
    "nbf",
    "nonce",
    "at_hash",
    "c_hash",
    "s_hash",
    "auth_time",
    "azp",
    "sid",
    "jti",
    "acr",
    "amr",
    "_claim_names",
    "_claim_sources",
];

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The policy's view of a user, from verified claims.
pub fn identity_from(
    issuer: &str,
    claims: &serde_json::Map<String, serde_json::Value>,
    groups_claim: &str,
) -> Option<Identity> {
    let sub = claims.get("sub")?.as_str()?.to_string();
    if sub.is_empty() {
        return None;
    }
    let email = claims
        .get("email")
        .and_then(|v| v.as_str())
        .and_then(normalize_email);
    let email_verified = match claims.get("email_verified") {
        Some(serde_json::Value::Bool(b)) => Some(*b),
        Some(serde_json::Value::String(s)) => Some(s == "true"),
        _ => None,
    };
    let groups = match claims.get(groups_claim) {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(scalar).collect(),
        Some(v) => scalar(v).into_iter().collect(),
        None => Vec::new(),
    };
    let mut out = BTreeMap::new();
    for (k, v) in claims {
        if TOKEN_CLAIMS.contains(&k.as_str())
            || k == "sub"
            || k == "email"
            || k == "email_verified"
            || k == groups_claim
        {
            continue;
        }
        match v {
            serde_json::Value::Array(a) => {
                out.insert(
                    k.clone(),
                    ClaimValue::List(a.iter().filter_map(scalar).collect()),
                );
            }
            v => {
                if let Some(s) = scalar(v) {
                    out.insert(k.clone(), ClaimValue::Str(s));
                }
            }
        }
    }
    Some(Identity {
        iss: issuer.to_string(),
        sub,
        email,
        email_verified,
        groups,
        claims: out,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::merge_userinfo;
    use serde_json::{json, Map, Value};

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    /// `email_verified` after merging, and the email it is about.
    fn merged(token: Value, userinfo: Value) -> (Option<Value>, Option<Value>) {
        let mut claims = map(token);
        merge_userinfo(&mut claims, map(userinfo));
        (
            claims.get("email").cloned(),
            claims.get("email_verified").cloned(),
        )
    }

    #[test]
    fn email_verified_comes_from_where_the_email_came_from() {
        let a = json!("a@example.com");
        // The token carries the email without saying: userinfo's word on the same address.
        assert_eq!(
            merged(
                json!({"sub": "u", "email": a}),
                json!({"sub": "u", "email": a, "email_verified": false})
            ),
            (Some(a.clone()), Some(json!(false)))
        );
        // The same address spelled otherwise is the same address.
        assert_eq!(
            merged(
                json!({"sub": "u", "email": a}),
                json!({"sub": "u", "email": "A@Example.COM", "email_verified": false})
            ),
            (Some(a.clone()), Some(json!(false)))
        );
        // ... but not on another address.
        assert_eq!(
            merged(
                json!({"sub": "u", "email": a}),
                json!({"sub": "u", "email": "b@x.test", "email_verified": true})
            ),
            (Some(a.clone()), None)
        );
        // The token's own word on its own email wins.
        assert_eq!(
            merged(
                json!({"sub": "u", "email": a, "email_verified": false}),
                json!({"email": a, "email_verified": true})
            ),
            (Some(a.clone()), Some(json!(false)))
        );
        // The token says "verified" but names no email: the email from userinfo carries
        // userinfo's verification, or none, never the token's.
        assert_eq!(
            merged(
                json!({"sub": "u", "email_verified": true}),
                json!({"sub": "u", "email": a, "email_verified": false})
            ),
            (Some(a.clone()), Some(json!(false)))
        );
        assert_eq!(
            merged(
                json!({"sub": "u", "email_verified": true}),
                json!({"sub": "u", "email": a})
            ),
            (Some(a), None)
        );
        // Other claims fill only what the token lacks.
        let mut claims = map(json!({"sub": "u", "groups": ["a"]}));
        merge_userinfo(&mut claims, map(json!({"groups": ["b"], "name": "N"})));
        assert_eq!(
            (claims["groups"].clone(), claims["name"].clone()),
            (json!(["a"]), json!("N"))
        );
    }
}
