//! ACME for several replicas sharing a session store (`autocert` with `session_store`): one
//! replica orders, every replica serves the certificate and answers the CA's validation.
//!
//! rustls-acme's state machine keeps its challenge answers in a resolver of its own, which
//! another replica cannot read; so here the order is driven with rustls-acme's ACME client
//! (`rustls_acme::acme`: account, order, authorizations, finalize) and everything a replica
//! needs lives in Redis, per host:
//! - `…:lock` (`SET NX EX`): the replica ordering now; the others wait for its result.
//! - `…:cert`: the certificate (key and chain, PEM, as `autocert_dir` holds it).
//! - `…:alpn` / `…:http01:TOKEN`: the TLS-ALPN-01 certificate (key and certificate, PEM) or
//!   the HTTP-01 key authorization while a validation is due, for whichever replica the
//!   CA's connection reaches. Published on the host's channel; read again at each subscribe.
//! - the account key, shared by every replica (one ACME account).
//!
//! The ordering replica waits [`PROPAGATION`] after publishing a challenge before asking the
//! CA to validate. Renewal is at 2/3 of the certificate's lifetime, by whichever replica takes
//! the lock first. With the store unreachable a replica keeps serving what it has (and its
//! `autocert_dir` copy) and tries again.

use base64::Engine;
use futures_util::StreamExt;
use rcgen::{
    CertificateParams, CustomExtension, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256,
};
use rustls::sign::CertifiedKey;
use rustls::ClientConfig;
use rustls_acme::acme::{
    Account, AuthStatus, Challenge, ChallengeType, Directory, Identifier, OrderStatus,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::acme_store::{backoff, digest, DirStore, HostCert};
use crate::config::settings::AutocertSettings;

/// Time given to every replica to hear of a challenge before the CA is asked to validate.
pub const PROPAGATION: Duration = Duration::from_secs(2);
/// How long an order may hold the lock (a replica that dies lets another take over then).
const LOCK_SECONDS: u64 = 900;
/// How long a challenge answer is kept.
const CHALLENGE_SECONDS: u64 = 600;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The store's keys for one host (and one ACME directory and contact list).
struct Keys {
    host: String,
    lock: String,
    cert: String,
    alpn: String,
    http01: String,
    account: String,
    channel: String,
}

impl Keys {
    fn new(host: &str, s: &AutocertSettings) -> Keys {
        let mut parts: Vec<&str> = s.contacts.iter().map(String::as_str).collect();
        parts.push(&s.directory);
        let account = format!("portcullis:acme:{}:account", digest(&parts));
        let base = format!("portcullis:acme:{}:{host}", digest(&[&s.directory]));
        Keys {
            host: host.to_string(),
            lock: format!("{base}:lock"),
            cert: format!("{base}:cert"),
            alpn: format!("{base}:alpn"),
            http01: format!("{base}:http01:"),
            account,
            channel: format!("{base}:events"),
        }
    }
}

type Store = redis::aio::MultiplexedConnection;

async fn connect(client: &redis::Client) -> Result<Store, String> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("session store: {e}"))
}

/// Keeps one host's certificate: installs what the store holds, orders under the lock when
/// none is valid or its renewal is due, and follows the other replicas' challenges.
pub async fn run(
    host: String,
    s: AutocertSettings,
    tls: Arc<ClientConfig>,
    cert: Arc<HostCert>,
    client: redis::Client,
    replica: Arc<str>,
) {
    let keys = Arc::new(Keys::new(&host, &s));
    let local = DirStore {
        dir: s.dir.clone(),
        cert: cert.clone(),
    };
    let changed = Arc::new(tokio::sync::Notify::new());
    let follower = tokio::spawn(follow(
        client.clone(),
        keys.clone(),
        cert.clone(),
        changed.clone(),
    ));
    let _stop_following = AbortOnDrop(follower.abort_handle());
    // The local copy first: served at once, also while the store is unreachable.
    if let Ok(Some(pem)) = local.read(local_name(&keys.host, &s)).await {
        install(&cert, &local, &pem);
    }
    let mut failures: u32 = 0;
    let mut reported_down = false;
    loop {
        let mut store = match connect(&client).await {
            Ok(c) => c,
            Err(e) => {
                if !reported_down {
                    tracing::warn!(%host, error = %e, "ACME: the session store is unreachable; serving the certificate this replica has");
                    reported_down = true;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        reported_down = false;
        match get(&mut store, &keys.cert).await {
            Ok(Some(pem)) => {
                if install(&cert, &local, pem.as_bytes()) {
                    let _ = local
                        .write(local_name(&keys.host, &s), pem.as_bytes())
                        .await;
                }
            }
            Ok(None) => {}
            Err(_) => continue,
        }
        let now = i64::try_from(crate::clock::now()).unwrap_or(i64::MAX);
        let renew_at = cert.renew_at.load(Ordering::Relaxed);
        if cert.not_after.load(Ordering::Relaxed) > now && renew_at > now {
            let wait = Duration::from_secs(u64::try_from(renew_at - now).unwrap_or(0).min(3600));
            let _ = tokio::time::timeout(wait, changed.notified()).await;
            continue;
        }
        let locked: Result<bool, _> = redis::cmd("SET")
            .arg(&keys.lock)
            .arg(&*replica)
            .arg("NX")
            .arg("EX")
            .arg(LOCK_SECONDS)
            .query_async::<Option<String>>(&mut store)
            .await
            .map(|r| r.is_some());
        if !matches!(locked, Ok(true)) {
            // Another replica orders: its certificate arrives on the channel.
            let _ = tokio::time::timeout(Duration::from_secs(5), changed.notified()).await;
            continue;
        }
        cert.orders.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%host, directory = %s.directory, "ACME: ordering a certificate for every replica (this one holds the lock)");
        let result = order(&s, &tls, &keys, &mut store).await;
        let _: Result<(), _> = release(&mut store, &keys.lock, &replica).await;
        match result {
            Ok(pem) => {
                failures = 0;
                let stored: Result<(), _> = redis::pipe()
                    .cmd("SET")
                    .arg(&keys.cert)
                    .arg(&pem)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(&keys.channel)
                    .arg("cert")
                    .ignore()
                    .query_async(&mut store)
                    .await;
                if let Err(e) = stored {
                    tracing::warn!(%host, error = %e, "ACME: the certificate could not be stored for the other replicas; they will order again");
                }
                install(&cert, &local, pem.as_bytes());
                let _ = local
                    .write(local_name(&keys.host, &s), pem.as_bytes())
                    .await;
                tracing::info!(%host, not_after = cert.not_after.load(Ordering::Relaxed), "ACME: new certificate issued, shared and served");
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures);
                tracing::warn!(%host, error = %e, retry_in_s = wait.as_secs(), "ACME: order failed (is DNS for the host pointing at the replicas, and is the port reachable from the internet?)");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The file `autocert_dir` keeps this host's certificate in (rustls-acme's naming).
fn local_name(host: &str, s: &AutocertSettings) -> String {
    format!("{host}.{}.pem", digest(&[&s.directory]))
}

/// Serves `pem` (key, then chain) for the host if it parses; returns whether it did.
fn install(cert: &HostCert, local: &DirStore, pem: &[u8]) -> bool {
    match certified_key(pem) {
        Some(k) => {
            local.note_expiry(pem);
            cert.shared_cert.store(Some(Arc::new(k)));
            true
        }
        None => {
            tracing::warn!("ACME: a stored certificate does not parse; ignored");
            false
        }
    }
}

/// A PKCS#8 key and its certificate chain, from PEM.
fn certified_key(pem: &[u8]) -> Option<CertifiedKey> {
    let key = PrivateKeyDer::from_pem_slice(pem).ok()?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .ok()?;
    if chain.is_empty() {
        return None;
    }
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).ok()?;
    Some(CertifiedKey::new(chain, signer))
}

async fn get(store: &mut Store, key: &str) -> Result<Option<String>, redis::RedisError> {
    redis::cmd("GET").arg(key).query_async(store).await
}

/// Deletes the lock if this replica still holds it.
async fn release(store: &mut Store, lock: &str, replica: &str) -> Result<(), redis::RedisError> {
    redis::cmd("EVAL")
        .arg("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end")
        .arg(1)
        .arg(lock)
        .arg(replica)
        .query_async::<i64>(store)
        .await
        .map(|_| ())
}

/// Follows the host's channel: challenge answers and new certificates from the replica that
/// orders. Reads the current challenge again after each (re)subscription.
async fn follow(
    client: redis::Client,
    keys: Arc<Keys>,
    cert: Arc<HostCert>,
    changed: Arc<tokio::sync::Notify>,
) {
    loop {
        let r: Result<(), String> = async {
            let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
            pubsub
                .subscribe(&keys.channel)
                .await
                .map_err(|e| e.to_string())?;
            let mut store = connect(&client).await?;
            load_alpn(&mut store, &keys, &cert).await;
            changed.notify_one();
            let mut messages = pubsub.on_message();
            while let Some(m) = messages.next().await {
                let event: String = m.get_payload().unwrap_or_default();
                match event.split_once(' ') {
                    Some(("http01", token)) => {
                        let key = format!("{}{token}", keys.http01);
                        if let Ok(Some(auth)) = get(&mut store, &key).await {
                            if let Ok(mut m) = cert.shared_http01.lock() {
                                m.insert(token.to_string(), auth);
                            }
                        }
                    }
                    _ if event == "alpn" => load_alpn(&mut store, &keys, &cert).await,
                    _ if event == "done" => {
                        cert.shared_challenge.store(None);
                        if let Ok(mut m) = cert.shared_http01.lock() {
                            m.clear();
                        }
                    }
                    _ if event == "cert" => changed.notify_one(),
                    _ => {}
                }
            }
            Err("the subscription ended".into())
        }
        .await;
        if let Err(e) = r {
            tracing::debug!(host = %keys.host, error = %e, "ACME: following the other replicas again soon");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn load_alpn(store: &mut Store, keys: &Keys, cert: &HostCert) {
    if let Ok(Some(pem)) = get(store, &keys.alpn).await {
        cert.shared_challenge
            .store(certified_key(pem.as_bytes()).map(Arc::new));
    }
}

/// One order, its challenges answered through the store; the certificate (key and chain).
async fn order(
    s: &AutocertSettings,
    tls: &Arc<ClientConfig>,
    keys: &Keys,
    store: &mut Store,
) -> Result<String, String> {
    let directory = Directory::discover(tls, &s.directory)
        .await
        .map_err(|e| e.to_string())?;
    let account_key = account_key(store, &keys.account).await?;
    let account = Account::create_with_keypair(tls, directory, &s.contacts, &account_key)
        .await
        .map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(vec![keys.host.clone()]).map_err(|e| e.to_string())?;
    params.distinguished_name = DistinguishedName::new();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
    let (order_url, mut order) = account
        .new_order(tls, vec![keys.host.clone()])
        .await
        .map_err(|e| e.to_string())?;
    let result = loop {
        match order.status {
            OrderStatus::Pending => {
                for url in &order.authorizations {
                    authorize(s, tls, &account, url, keys, store).await?;
                }
                order = account
                    .order(tls, &order_url)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            OrderStatus::Processing => {
                for i in 0u64..10 {
                    tokio::time::sleep(Duration::from_secs(1 << i)).await;
                    order = account
                        .order(tls, &order_url)
                        .await
                        .map_err(|e| e.to_string())?;
                    if order.status != OrderStatus::Processing {
                        break;
                    }
                }
                if order.status == OrderStatus::Processing {
                    break Err("the order is still processing".to_string());
                }
            }
            OrderStatus::Ready => {
                order = account
                    .finalize(tls, &order.finalize, csr.der())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            OrderStatus::Valid { certificate } => {
                let chain = account
                    .certificate(tls, certificate)
                    .await
                    .map_err(|e| e.to_string())?;
                break Ok([key.serialize_pem(), "\n".into(), chain].concat());
            }
            OrderStatus::Invalid => break Err(format!("the CA refused the order: {order:?}")),
        }
    };
    let _: Result<(), _> = redis::cmd("PUBLISH")
        .arg(&keys.channel)
        .arg("done")
        .query_async(store)
        .await;
    result
}

/// The shared ACME account's key: the one in the store, or a new one put there (the first
/// replica to write it wins, so every replica uses one account).
async fn account_key(store: &mut Store, key: &str) -> Result<Vec<u8>, String> {
    if let Some(k) = get(store, key).await.map_err(|e| e.to_string())? {
        return B64.decode(k).map_err(|e| e.to_string());
    }
    let fresh = Account::generate_key_pair();
    let _: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(B64.encode(&fresh))
        .arg("NX")
        .query_async(store)
        .await
        .map_err(|e| e.to_string())?;
    let k = get(store, key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the account key vanished from the store")?;
    B64.decode(k).map_err(|e| e.to_string())
}

/// Answers one authorization: the challenge goes into the store for every replica, then the
/// CA is asked to validate, and its answer awaited.
async fn authorize(
    s: &AutocertSettings,
    tls: &Arc<ClientConfig>,
    account: &Account,
    url: &str,
    keys: &Keys,
    store: &mut Store,
) -> Result<(), String> {
    let auth = account.auth(tls, url).await.map_err(|e| e.to_string())?;
    match auth.status {
        AuthStatus::Pending => {}
        AuthStatus::Valid => return Ok(()),
        other => return Err(format!("authorization {other:?}")),
    }
    let Identifier::Dns(domain) = &auth.identifier;
    let thumbprint = thumbprint(account)?;
    // TLS-ALPN-01 on `address`; HTTP-01 on the redirect port when there is one and the CA
    // offers no TLS-ALPN-01.
    let alpn = auth
        .challenges
        .iter()
        .find(|c| c.typ == ChallengeType::TlsAlpn01);
    let http = auth
        .challenges
        .iter()
        .find(|c| c.typ == ChallengeType::Http01);
    let challenge: &Challenge = match (alpn, http) {
        (Some(c), _) => {
            let pem = alpn_certificate(domain, &format!("{}.{thumbprint}", c.token))?;
            publish(store, &keys.alpn, &pem, &keys.channel, "alpn").await?;
            c
        }
        (None, Some(c)) if s.http01 => {
            let key = format!("{}{}", keys.http01, c.token);
            let auth = format!("{}.{thumbprint}", c.token);
            publish(
                store,
                &key,
                &auth,
                &keys.channel,
                &format!("http01 {}", c.token),
            )
            .await?;
            c
        }
        _ => return Err("the CA offers no challenge Portcullis answers".into()),
    };
    tokio::time::sleep(PROPAGATION).await;
    account
        .challenge(tls, &challenge.url)
        .await
        .map_err(|e| e.to_string())?;
    for i in 0u64..6 {
        tokio::time::sleep(Duration::from_secs(1 << i)).await;
        let auth = account.auth(tls, url).await.map_err(|e| e.to_string())?;
        match auth.status {
            AuthStatus::Pending => {
                let _ = account.challenge(tls, &challenge.url).await;
            }
            AuthStatus::Valid => return Ok(()),
            other => return Err(format!("the CA's validation of {domain} failed: {other:?}")),
        }
    }
    Err(format!("the CA did not validate {domain} in time"))
}

async fn publish(
    store: &mut Store,
    key: &str,
    value: &str,
    channel: &str,
    event: &str,
) -> Result<(), String> {
    redis::pipe()
        .cmd("SET")
        .arg(key)
        .arg(value)
        .arg("EX")
        .arg(CHALLENGE_SECONDS)
        .ignore()
        .cmd("PUBLISH")
        .arg(channel)
        .arg(event)
        .ignore()
        .query_async::<()>(store)
        .await
        .map_err(|e| format!("session store: {e}"))
}

/// RFC 7638 thumbprint of the account's public key (an EC P-256 JWK), base64url.
fn thumbprint(account: &Account) -> Result<String, String> {
    use aws_lc_rs::signature::KeyPair as _;
    let point = account.key_pair.public_key().as_ref();
    if point.len() != 65 || point[0] != 4 {
        return Err("the account key is not an uncompressed P-256 point".into());
    }
    let jwk = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        B64.encode(&point[1..33]),
        B64.encode(&point[33..65])
    );
    Ok(B64.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        jwk.as_bytes(),
    )))
}

/// The TLS-ALPN-01 certificate (RFC 8737) for `domain` and the key authorization: key and
/// self-signed certificate, PEM, as every replica loads it.
fn alpn_certificate(domain: &str, key_authorization: &str) -> Result<String, String> {
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
    let mut params = CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest.as_ref())];
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok([key.serialize_pem(), cert.pem()].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alpn_certificate_loads_as_a_certified_key() {
        let pem = alpn_certificate("a.example.com", "token.thumb").unwrap();
        let k = certified_key(pem.as_bytes()).unwrap();
        assert_eq!(k.cert.len(), 1);
        assert!(certified_key(b"nonsense").is_none());
    }
}
