//! The YAML file as written: serde structs, unknown keys rejected, positions kept.
//! Nothing here is trusted or interpreted; `compile` turns it into a `Runtime`.

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

use super::node::Node;

pub type S<T> = Spanned<T>;

/// One string or a list of them (`to: http://a` or `to: [http://a, http://b]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    pub cert: S<String>,
    pub key: S<String>,
}

/// Top-level keys. Every one of them can be overridden by `PORTCULLIS_<KEY>`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub address: Option<S<String>>,
    pub http_redirect_addr: Option<S<String>>,
    pub insecure_server: Option<S<bool>>,
    pub certificates: Option<Vec<S<RawCertificate>>>,
    pub autocert: Option<S<bool>>,
    pub autocert_dir: Option<S<String>>,
    pub autocert_email: Option<S<String>>,
    pub autocert_use_staging: Option<S<bool>>,
    pub autocert_ca: Option<S<String>>,
    pub autocert_trusted_ca: Option<S<String>>,
    pub idp_provider_url: Option<S<String>>,
    pub idp_client_id: Option<S<String>>,
    pub idp_client_secret: Option<S<String>>,
    pub idp_client_secret_file: Option<S<String>>,
    pub idp_scopes: Option<S<Vec<String>>>,
    pub idp_groups_claim: Option<S<String>>,
    pub cookie_secret: Option<S<String>>,
    pub cookie_secret_file: Option<S<String>>,
    pub cookie_name: Option<S<String>>,
    pub cookie_expire: Option<S<String>>,
    pub cookie_domain: Option<S<String>>,
    pub signing_key: Option<S<String>>,
    pub signing_key_file: Option<S<String>>,
    pub jwt_claims_headers: Option<S<BTreeMap<String, String>>>,
    pub pass_identity_headers: Option<S<bool>>,
    pub metrics_address: Option<S<String>>,
    pub log_level: Option<S<String>>,
    pub log_format: Option<S<String>>,
    pub timeout_read_header: Option<S<String>>,
    pub timeout_idle: Option<S<String>>,
    pub max_connections: Option<S<u32>>,
    pub max_connections_per_ip: Option<S<u32>>,
    pub hsts_max_age: Option<S<String>>,
    pub data_dir: Option<S<String>>,
    /// `redis://…` or `rediss://…`: revocations shared by several replicas.
    pub session_store: Option<S<String>>,
    pub session_store_file: Option<S<String>>,
    pub routes: Option<Vec<S<RawRoute>>>,
    /// What must stay true of the policies: checked by `check` and before every reload.
    pub tests: Option<Vec<S<RawTestCase>>>,
}

/// One policy test: a request, and what Portcullis must decide for it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestCase {
    pub name: Option<S<String>>,
    pub url: S<String>,
    pub email: Option<S<String>>,
    pub groups: Option<S<Vec<String>>>,
    pub claims: Option<S<BTreeMap<String, OneOrMany>>>,
    pub user: Option<S<String>>,
    pub method: Option<S<String>>,
    pub ip: Option<S<String>>,
    pub expect: S<String>,
}

/// One route, with Pomerium's key names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// A label for logs and metrics; defaults to `from` (+ path matcher).
    pub name: Option<S<String>>,
    pub from: S<String>,
    /// A URL, a list of URLs, or a list of `{when, to}` entries (compile/choices.rs).
    pub to: Node,
    pub prefix: Option<S<String>>,
    pub path: Option<S<String>>,
    pub regex: Option<S<String>>,
    pub prefix_rewrite: Option<S<String>>,
    pub preserve_host_header: Option<bool>,
    pub allow_websockets: Option<bool>,
    pub timeout: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub tls_custom_ca: Option<S<String>>,
    pub tls_server_name: Option<S<String>>,
    pub tls_skip_verify: Option<S<bool>>,
    pub set_request_headers: Option<S<BTreeMap<String, String>>>,
    pub remove_request_headers: Option<S<Vec<String>>>,
    pub pass_identity_headers: Option<bool>,
    pub jwt_claims_headers: Option<S<BTreeMap<String, String>>>,
    /// A list of `{when, set_request_headers}`: the first that matches the user applies.
    pub grants: Option<Node>,
    pub allow_public_unauthenticated_access: Option<S<bool>>,
    pub allow_any_authenticated_user: Option<S<bool>>,
    pub policy: Option<Node>,
    /// A second policy tried beside `policy` on every request and never enforced.
    pub shadow_policy: Option<Node>,
    pub allowed_users: Option<S<Vec<String>>>,
    pub allowed_domains: Option<S<Vec<String>>>,
    pub allowed_groups: Option<S<Vec<String>>>,
}
