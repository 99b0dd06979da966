//! `PORTCULLIS_<KEY>` overrides for top-level keys, read through a trait so tests never touch
//! the process environment.

use serde::de::DeserializeOwned;
use serde_saphyr::{Location, Spanned};
use std::collections::{BTreeMap, BTreeSet};

use super::error::{ConfigError, Pos};
use super::raw::RawConfig;

/// Where configuration reads environment variables from.
pub trait Env: Send + Sync {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// A fixed set of variables (tests, `check` with a clean environment).
#[derive(Default, Clone)]
pub struct MapEnv(pub BTreeMap<String, String>);

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

pub fn env_name(key: &str) -> String {
    format!("PORTCULLIS_{}", key.to_ascii_uppercase())
}

fn literal(v: String) -> Spanned<String> {
    Spanned::new(v, Location::UNKNOWN, Location::UNKNOWN)
}

fn yaml<T: DeserializeOwned>(name: &str, v: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str::<T>(v).map_err(|e| {
        let mut ce = super::error::from_yaml(&format!("env {name}"), &e);
        ce.pos = Pos::default();
        ce
    })
}

macro_rules! overrides {
    ($raw:ident, $env:ident, $errs:ident, $set:ident;
     strings: [$($s:ident),* $(,)?];
     typed: [$($t:ident),* $(,)?]) => {
        $(
            let name = env_name(stringify!($s));
            if let Some(v) = $env.var(&name) {
                $set.insert(stringify!($s));
                $raw.$s = Some(literal(v));
            }
        )*
        $(
            let name = env_name(stringify!($t));
            if let Some(v) = $env.var(&name) {
                $set.insert(stringify!($t));
                match yaml(&name, &v) {
                    Ok(x) => $raw.$t = Some(x),
                    Err(e) => $errs.push(e),
                }
            }
        )*
    };
}

/// Applies every `PORTCULLIS_<KEY>` that is set; returns the keys that came from the
/// environment (so later errors about them name the variable, not a file position).
/// `routes` and `tests` cannot be set this way.
pub fn apply(
    raw: &mut RawConfig,
    env: &dyn Env,
    errs: &mut Vec<ConfigError>,
) -> BTreeSet<&'static str> {
    let mut set = BTreeSet::new();
    overrides!(raw, env, errs, set;
        strings: [address, http_redirect_addr, autocert_dir, autocert_email, autocert_ca,
                  autocert_trusted_ca, idp_provider_url, idp_client_id, idp_client_secret,
                  idp_client_secret_file, idp_groups_claim, cookie_secret, cookie_secret_file,
                  cookie_name, cookie_expire, cookie_domain, signing_key, signing_key_file,
                  metrics_address, log_level, log_format, timeout_read_header, timeout_idle,
                  hsts_max_age, data_dir, session_store, session_store_file];
        typed: [insecure_server, autocert, autocert_use_staging, idp_scopes, jwt_claims_headers,
                pass_identity_headers, max_connections, max_connections_per_ip]);
    for key in ["routes", "tests"] {
        let name = env_name(key);
        if env.var(&name).is_some() {
            errs.push(ConfigError::new(
                &format!("env {name}"),
                Pos::default(),
                format!("{key} can only be set in the config file"),
            ));
        }
    }
    set
}
