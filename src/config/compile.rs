//! Raw YAML structs → typed, validated values. Everything a request needs is computed here,
//! once; handlers never parse a config string again.

use http::{HeaderName, HeaderValue};
use serde_saphyr::Spanned;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::duration;
use super::env::env_name;
use super::error::{Errors, Pos};
use super::raw::{RawConfig, RawRoute};
use super::settings::*;
use crate::policy::parse::{compile as compile_policy, PolicyInput};
use crate::route::{FromMatch, PathMatch, Route};
use crate::upstream::{Upstream, UpstreamClient, UpstreamTls};

/// Everything compiled from one config file.
pub struct Compiled {
    pub settings: Settings,
    pub routes: Vec<Route>,
    /// Things worth a warning at load time (insecure choices, defaults taken).
    pub warnings: Vec<String>,
    /// Files the config names (certificates, keys, secrets, CAs): a change reloads.
    pub files: Vec<PathBuf>,
}

struct Ctx<'a> {
    errs: Errors<'a>,
    env_keys: BTreeSet<&'static str>,
    base_dir: PathBuf,
    warnings: Vec<String>,
    files: Vec<PathBuf>,
}

impl Ctx<'_> {
    /// An error about a top-level key: names the environment variable if it came from there.
    fn top(&mut self, key: &str, pos: Pos, msg: impl Into<String>) {
        if self.env_keys.contains(key) {
            self.errs.list.push(super::error::ConfigError::new(
                &format!("env {}", env_name(key)),
                Pos::default(),
                msg,
            ));
        } else {
            self.errs.at(pos, msg);
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Reads a file the config names, relative to the config file's folder.
    fn read(&mut self, key: &str, pos: Pos, p: &str) -> Option<String> {
        let path = self.path(p);
        self.files.push(path.clone());
        match std::fs::read_to_string(path) {
            Ok(s) => Some(s),
            Err(e) => {
                self.top(key, pos, format!("{key}: cannot read `{p}`: {e}"));
                None
            }
        }
    }
}

pub(crate) fn pos<T>(s: &Spanned<T>) -> Pos {
    Pos::of(&s.referenced)
}

/// Compiles a parsed config; `source` names the file in errors.
pub fn compile(
    raw: RawConfig,
    source: &str,
    base_dir: &Path,
    env_keys: BTreeSet<&'static str>,
) -> Result<Compiled, super::error::ConfigErrors> {
    let mut cx = Ctx {
        errs: Errors::new(source),
        env_keys,
        base_dir: base_dir.to_path_buf(),
        warnings: Vec::new(),
        files: Vec::new(),
    };
    let settings = settings(&raw, &mut cx);
    let mut routes = Vec::new();
    match &raw.routes {
        None => cx
            .errs
            .at(Pos::START, "no `routes`: nothing would be served"),
        Some(list) if list.is_empty() => cx
            .errs
            .at(Pos::START, "`routes` is empty: nothing would be served"),
        Some(list) => {
            for r in list {
                if let Some(route) = route(&r.value, pos(r), &raw, &mut cx) {
                    // With cookie_domain the session is the domain's: a route host outside it
                    // could not set the cookie at sign-in (browsers refuse the Domain).
                    let h = &route.from.host;
                    if let Some(d) = settings
                        .cookie
                        .domain
                        .as_ref()
                        .filter(|d| h != *d && !h.ends_with(&format!(".{d}")))
                    {
                        cx.errs.at(
                            pos(&r.value.from),
                            format!("from: `{h}` is not under cookie_domain `{d}`: its sign-in could not set the session cookie"),
                        );
                    }
                    routes.push(route);
                }
            }
        }
    }
    // A name Portcullis sets on any route is never taken from a client on any route: a public
    // route to the same upstream would otherwise carry a forged copy of another route's
    // identity or secret header.
    let mut owned: Vec<HeaderName> = Vec::new();
    for r in &routes {
        for h in &r.owned_headers {
            if !owned.contains(h) {
                owned.push(h.clone());
            }
        }
    }
    for r in &mut routes {
        r.owned_headers.clone_from(&owned);
    }
    let Ctx {
        errs,
        warnings,
        mut files,
        ..
    } = cx;
    for c in &settings.certificates {
        files.push(c.cert.clone());
        files.push(c.key.clone());
    }
    errs.finish(Compiled {
        settings,
        routes,
        warnings,
        files,
    })
}

fn socket_addr(cx: &mut Ctx<'_>, key: &str, v: &Spanned<String>) -> Option<SocketAddr> {
    let s = v.value.trim();
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    match full.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.top(
                key,
                pos(v),
                format!("{key}: `{s}` is not a listen address (examples: `:443`, `127.0.0.1:8443`, `[::]:443`)"),
            );
            None
        }
    }
}

fn dur(cx: &mut Ctx<'_>, key: &str, v: Option<&Spanned<String>>, default: Duration) -> Duration {
    match v {
        None => default,
        Some(s) => match duration::parse(&s.value) {
            Ok(d) => d,
            Err(e) => {
                cx.top(key, pos(s), format!("{key}: {e}"));
                default
            }
        },
    }
}

/// A secret's text and where it came from, so that an error about its value names that place.
struct Secret {
    value: String,
    /// The key (`cookie_secret`…), as written inline.
    key: &'static str,
    /// The position of the key that gave it, and the file it was read from for a `*_file` key.
    pos: Pos,
    file: Option<String>,
}

impl Secret {
    /// An error about the value: at the inline key (`file:line:col: key: …`), or at the
    /// `*_file` key naming the file read; `env PORTCULLIS_…` when the environment set either.
    fn error(&self, cx: &mut Ctx<'_>, msg: &str) {
        match &self.file {
            None => cx.top(self.key, self.pos, format!("{}: {msg}", self.key)),
            Some(path) => {
                let key_file = format!("{}_file", self.key);
                cx.top(&key_file, self.pos, format!("{key_file} `{path}`: {msg}"));
            }
        }
    }
}

/// A secret given inline or through its `*_file` twin (not both).
fn secret_from(
    cx: &mut Ctx<'_>,
    key: &'static str,
    inline: Option<&Spanned<String>>,
    file: Option<&Spanned<String>>,
) -> Option<Secret> {
    match (inline, file) {
        (Some(a), Some(_)) => {
            cx.top(
                key,
                pos(a),
                format!("set either {key} or {key}_file, not both"),
            );
            None
        }
        (Some(a), None) => Some(Secret {
            value: a.value.trim().to_string(),
            key,
            pos: pos(a),
            file: None,
        }),
        (None, Some(f)) => {
            let key_file = format!("{key}_file");
            cx.read(&key_file, pos(f), &f.value).map(|s| Secret {
                value: s.trim().to_string(),
                key,
                pos: pos(f),
                file: Some(f.value.clone()),
            })
        }
        (None, None) => None,
    }
}

fn settings(raw: &RawConfig, cx: &mut Ctx<'_>) -> Settings {
    let insecure_server = raw.insecure_server.as_ref().is_some_and(|b| b.value);
    let address = raw
        .address
        .as_ref()
        .and_then(|a| socket_addr(cx, "address", a))
        .unwrap_or_else(|| {
            SocketAddr::from(([0, 0, 0, 0], if insecure_server { 80 } else { 443 }))
        });
    let http_redirect_addr = raw
        .http_redirect_addr
        .as_ref()
        .filter(|a| !a.value.is_empty())
        .and_then(|a| socket_addr(cx, "http_redirect_addr", a));
    let metrics_address = raw
        .metrics_address
        .as_ref()
        .filter(|a| !a.value.is_empty())
        .and_then(|a| socket_addr(cx, "metrics_address", a));
    let certificates: Vec<CertFiles> = raw
        .certificates
        .iter()
        .flatten()
        .map(|c| CertFiles {
            cert: cx.path(&c.value.cert.value),
            key: cx.path(&c.value.key.value),
            pos: pos(c),
        })
        .collect();
    let autocert = autocert_settings(raw, cx, insecure_server, http_redirect_addr.is_some());
    if insecure_server && !certificates.is_empty() {
        cx.warnings
            .push("insecure_server is set: `certificates` are loaded but not served".into());
    }

    let idp = idp_settings(raw, cx);

    let cookie_secret = secret_from(
        cx,
        "cookie_secret",
        raw.cookie_secret.as_ref(),
        raw.cookie_secret_file.as_ref(),
    )
    .and_then(|s| {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(s.value.as_bytes())
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s.value.as_bytes()));
        match decoded.ok().and_then(|d| <[u8; 32]>::try_from(d).ok()) {
            Some(k) => Some(k),
            None => {
                s.error(
                    cx,
                    "must be 32 random bytes, base64-encoded; make one with `portcullis secret`",
                );
                None
            }
        }
    });
    if let (Some(_), None, Some(url)) = (&idp, &cookie_secret, &raw.idp_provider_url) {
        if raw.cookie_secret.is_none() && raw.cookie_secret_file.is_none() {
            cx.top(
                "idp_provider_url",
                pos(url),
                "sign-in needs cookie_secret (32 random bytes, base64): make one with `portcullis secret`",
            );
        }
    }
    let cookie = CookieSettings {
        secret: cookie_secret,
        name: raw
            .cookie_name
            .as_ref()
            .map_or_else(|| "_portcullis".to_string(), |s| s.value.clone()),
        expire: dur(
            cx,
            "cookie_expire",
            raw.cookie_expire.as_ref(),
            Duration::from_secs(14 * 3600),
        ),
        domain: raw
            .cookie_domain
            .as_ref()
            .map(|s| s.value.trim_start_matches('.').to_ascii_lowercase()),
    };
    if let Some(n) = raw.cookie_name.as_ref() {
        if n.value.is_empty()
            || !n
                .value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            cx.top(
                "cookie_name",
                pos(n),
                "cookie_name may use letters, digits, `_` and `-` only",
            );
        }
    }

    let signing_key = secret_from(
        cx,
        "signing_key",
        raw.signing_key.as_ref(),
        raw.signing_key_file.as_ref(),
    )
    .and_then(
        |s| match crate::auth::assertion::SigningKey::from_pem(&s.value) {
            Ok(k) => Some(k),
            Err(e) => {
                s.error(cx, &e);
                None
            }
        },
    );

    let log_format = match raw.log_format.as_ref().map(|s| s.value.as_str()) {
        None | Some("pretty") => LogFormat::Pretty,
        Some("json") => LogFormat::Json,
        Some(other) => {
            if let Some(p) = raw.log_format.as_ref() {
                cx.top(
                    "log_format",
                    pos(p),
                    format!("log_format: `{other}` (use pretty or json)"),
                );
            }
            LogFormat::Pretty
        }
    };
    let log_level = raw
        .log_level
        .as_ref()
        .map_or_else(|| "info".to_string(), |s| s.value.to_ascii_lowercase());
    if let Some(l) = raw.log_level.as_ref() {
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            cx.top(
                "log_level",
                pos(l),
                "log_level: use error, warn, info, debug or trace",
            );
        }
    }
    Settings {
        address,
        http_redirect_addr,
        insecure_server,
        certificates,
        autocert,
        idp,
        cookie,
        signing_key,
        metrics_address,
        log_level,
        log_format,
        timeout_read_header: dur(
            cx,
            "timeout_read_header",
            raw.timeout_read_header.as_ref(),
            Duration::from_secs(10),
        ),
        timeout_idle: dur(
            cx,
            "timeout_idle",
            raw.timeout_idle.as_ref(),
            Duration::from_secs(300),
        ),
        max_connections: positive(cx, "max_connections", raw.max_connections.as_ref(), 16384),
        max_connections_per_ip: positive(
            cx,
            "max_connections_per_ip",
            raw.max_connections_per_ip.as_ref(),
            1024,
        ),
        hsts_max_age: raw
            .hsts_max_age
            .as_ref()
            .map(|_| {
                dur(
                    cx,
                    "hsts_max_age",
                    raw.hsts_max_age.as_ref(),
                    Duration::ZERO,
                )
            })
            .filter(|d| !d.is_zero()),
        data_dir: raw
            .data_dir
            .as_ref()
            .map_or_else(|| cx.path("data"), |d| cx.path(&d.value)),
    }
}

fn positive(cx: &mut Ctx<'_>, key: &str, v: Option<&Spanned<u32>>, default: usize) -> usize {
    match v {
        None => default,
        Some(n) if n.value == 0 => {
            cx.top(key, pos(n), format!("{key} must be at least 1"));
            default
        }
        Some(n) => n.value as usize,
    }
}

fn autocert_settings(
    raw: &RawConfig,
    cx: &mut Ctx<'_>,
    insecure_server: bool,
    http01: bool,
) -> Option<AutocertSettings> {
    let on = raw.autocert.as_ref().filter(|a| a.value);
    let Some(on) = on else {
        let stray = [
            ("autocert_dir", raw.autocert_dir.is_some()),
            ("autocert_email", raw.autocert_email.is_some()),
            ("autocert_use_staging", raw.autocert_use_staging.is_some()),
            ("autocert_ca", raw.autocert_ca.is_some()),
            ("autocert_trusted_ca", raw.autocert_trusted_ca.is_some()),
        ];
        for (k, set) in stray {
            if set {
                cx.warnings.push(format!(
                    "`{k}` is set but `autocert` is not: it has no effect"
                ));
            }
        }
        return None;
    };
    if insecure_server {
        cx.top(
            "autocert",
            pos(on),
            "autocert needs TLS on `address`, but insecure_server turns TLS off: remove one of them",
        );
        return None;
    }
    let staging = raw.autocert_use_staging.as_ref().filter(|s| s.value);
    let directory = match (&raw.autocert_ca, staging) {
        (Some(ca), Some(_)) => {
            cx.top(
                "autocert_ca",
                pos(ca),
                "autocert_ca and autocert_use_staging both choose the ACME server: keep one",
            );
            return None;
        }
        (Some(ca), None) => match url::Url::parse(&ca.value) {
            Ok(u) if u.scheme() == "https" && u.host().is_some() => ca.value.clone(),
            _ => {
                cx.top(
                    "autocert_ca",
                    pos(ca),
                    format!(
                        "autocert_ca `{}` is not an https URL of an ACME directory (RFC 8555 servers are reached over https)",
                        ca.value
                    ),
                );
                return None;
            }
        },
        (None, Some(_)) => LETS_ENCRYPT_STAGING.to_string(),
        (None, None) => LETS_ENCRYPT.to_string(),
    };
    let mut contacts = Vec::new();
    if let Some(e) = &raw.autocert_email {
        let v = e.value.trim();
        let ok = v.split_once('@').is_some_and(|(u, d)| {
            !u.is_empty() && d.contains('.') && !d.contains('@') && !v.contains(char::is_whitespace)
        });
        if !ok {
            cx.top(
                "autocert_email",
                pos(e),
                format!("autocert_email `{v}` is not an email address"),
            );
            return None;
        }
        contacts.push(format!("mailto:{v}"));
    }
    let trusted_ca_pem = match &raw.autocert_trusted_ca {
        Some(p) => {
            let pem = cx.read("autocert_trusted_ca", pos(p), &p.value)?;
            if let Err(e) = crate::tls::files::root_store(pem.as_bytes()) {
                cx.top(
                    "autocert_trusted_ca",
                    pos(p),
                    format!("autocert_trusted_ca `{}`: {e}", p.value),
                );
                return None;
            }
            Some(pem)
        }
        None => None,
    };
    let dir = match &raw.autocert_dir {
        Some(d) => cx.path(&d.value),
        None => raw
            .data_dir
            .as_ref()
            .map_or_else(|| cx.path("data"), |d| cx.path(&d.value))
            .join("autocert"),
    };
    Some(AutocertSettings {
        directory,
        contacts,
        dir,
        trusted_ca_pem,
        http01,
    })
}

fn idp_settings(raw: &RawConfig, cx: &mut Ctx<'_>) -> Option<IdpSettings> {
    let url = raw.idp_provider_url.as_ref()?;
    let provider_url = match url::Url::parse(&url.value) {
        Ok(u) if u.scheme() == "https" || u.scheme() == "http" => u,
        _ => {
            cx.top(
                "idp_provider_url",
                pos(url),
                "idp_provider_url must be an http(s) URL (the issuer)",
            );
            return None;
        }
    };
    let Some(client_id) = raw.idp_client_id.as_ref() else {
        cx.top(
            "idp_provider_url",
            pos(url),
            "idp_provider_url is set but idp_client_id is missing",
        );
        return None;
    };
    let client_secret = secret_from(
        cx,
        "idp_client_secret",
        raw.idp_client_secret.as_ref(),
        raw.idp_client_secret_file.as_ref(),
    )
    .map(|s| s.value)
    .unwrap_or_default();
    Some(IdpSettings {
        provider_url,
        client_id: client_id.value.clone(),
        client_secret,
        scopes: raw.idp_scopes.as_ref().map_or_else(
            || {
                ["openid", "email", "profile", "offline_access"]
                    .map(String::from)
                    .to_vec()
            },
            |s| s.value.clone(),
        ),
        groups_claim: raw
            .idp_groups_claim
            .as_ref()
            .map_or_else(|| "groups".to_string(), |s| s.value.clone()),
    })
}

fn header_pairs(
    cx: &mut Ctx<'_>,
    key: &str,
    map: &Spanned<std::collections::BTreeMap<String, String>>,
) -> Vec<(HeaderName, String)> {
    let mut out = Vec::new();
    for (k, v) in &map.value {
        match HeaderName::from_bytes(k.as_bytes()) {
            Ok(h) => out.push((h, v.clone())),
            Err(_) => cx
                .errs
                .at(pos(map), format!("{key}: `{k}` is not a valid header name")),
        }
    }
    out
}

fn route(r: &RawRoute, rpos: Pos, raw: &RawConfig, cx: &mut Ctx<'_>) -> Option<Route> {
    let before = cx.errs.list.len();
    let from = from_url(cx, &r.from);
    let upstreams = to_urls(cx, r);

    let matchers = [&r.prefix, &r.path, &r.regex]
        .iter()
        .filter(|m| m.is_some())
        .count();
    if matchers > 1 {
        cx.errs.at(
            rpos,
            "a route takes at most one of `prefix`, `path` and `regex`",
        );
    }
    let path = if let Some(p) = &r.prefix {
        canonical_path(cx, "prefix", p).map(PathMatch::Prefix)
    } else if let Some(p) = &r.path {
        canonical_path(cx, "path", p).map(PathMatch::Exact)
    } else if let Some(re) = &r.regex {
        match regex::Regex::new(&format!("^(?:{})$", re.value)) {
            Ok(x) => Some(PathMatch::Regex(x)),
            Err(e) => {
                cx.errs.at(pos(re), format!("regex: {e}"));
                None
            }
        }
    } else {
        Some(PathMatch::Any)
    };
    let prefix_rewrite = r.prefix_rewrite.as_ref().and_then(|p| {
        if p.value.starts_with('/') {
            // The rewritten path must be normalized (`target::rewrite_prefix`): so must this.
            canonical_path(cx, "prefix_rewrite", p)
        } else {
            cx.errs.at(pos(p), "prefix_rewrite must start with `/`");
            None
        }
    });
    let timeout = dur(cx, "timeout", r.timeout.as_ref(), Duration::from_secs(30));
    let idle_timeout = dur(cx, "idle_timeout", r.idle_timeout.as_ref(), Duration::ZERO);

    let tls_skip_verify = r.tls_skip_verify.as_ref().is_some_and(|b| b.value);
    if let Some(b) = r.tls_skip_verify.as_ref().filter(|b| b.value) {
        cx.warnings.push(format!(
            "{}:{}:{}: tls_skip_verify: the upstream's certificate is not checked; anyone on the path can read and change this traffic",
            cx.errs.source, pos(b).line, pos(b).col
        ));
    }
    let custom_ca = r.tls_custom_ca.as_ref().and_then(|p| {
        let pem = cx.read("tls_custom_ca", pos(p), &p.value)?;
        match crate::tls::files::root_store(pem.as_bytes()) {
            Ok(store) => Some(store),
            Err(e) => {
                cx.errs.at(pos(p), format!("tls_custom_ca: {e}"));
                None
            }
        }
    });
    let server_name = r.tls_server_name.as_ref().and_then(|n| {
        match rustls_pki_types::ServerName::try_from(n.value.clone()) {
            Ok(sn) => Some(sn),
            Err(_) => {
                cx.errs.at(
                    pos(n),
                    format!("tls_server_name: `{}` is not a host name", n.value),
                );
                None
            }
        }
    });

    let mut set_request_headers = Vec::new();
    if let Some(m) = &r.set_request_headers {
        for (name, value) in header_pairs(cx, "set_request_headers", m) {
            let folded = crate::http::hop::folded_name(&name);
            if folded == http::header::HOST
                || folded == http::header::CONTENT_LENGTH
                || crate::http::hop::is_hop_by_hop(&folded)
            {
                // Written by Portcullis itself: a value here would be ignored or break framing.
                cx.errs.at(
                    pos(m),
                    format!(
                        "set_request_headers: `{name}` is Portcullis's to write (the upstream's \
                         Host is the `to` URL's, or the client's with preserve_host_header; \
                         framing and hop-by-hop headers belong to each connection)"
                    ),
                );
                continue;
            }
            match HeaderValue::from_str(&value) {
                Ok(v) => set_request_headers.push((name, v)),
                Err(_) => cx.errs.at(
                    pos(m),
                    format!(
                        "set_request_headers: the value of `{name}` is not a valid header value"
                    ),
                ),
            }
        }
    }
    let mut remove_request_headers = Vec::new();
    if let Some(list) = &r.remove_request_headers {
        for n in &list.value {
            match HeaderName::from_bytes(n.as_bytes()) {
                // Folded: a client's copy under any spelling is removed.
                Ok(h) => remove_request_headers.push(crate::http::hop::folded_name(&h)),
                Err(_) => cx.errs.at(
                    pos(list),
                    format!("remove_request_headers: `{n}` is not a valid header name"),
                ),
            }
        }
    }
    let jwt_claims_headers = match (&r.jwt_claims_headers, &raw.jwt_claims_headers) {
        (Some(m), _) => header_pairs(cx, "jwt_claims_headers", m),
        (None, Some(m)) => header_pairs(cx, "jwt_claims_headers", m),
        (None, None) => Vec::new(),
    };
    let pass_identity_headers = r
        .pass_identity_headers
        .or(raw.pass_identity_headers.as_ref().map(|b| b.value))
        .unwrap_or(false);

    let input = PolicyInput {
        policy: r.policy.as_ref(),
        allowed_users: as_list(&r.allowed_users),

        allowed_domains: as_list(&r.allowed_domains),
        allowed_groups: as_list(&r.allowed_groups),
        public: r
            .allow_public_unauthenticated_access
            .as_ref()
            .map(|b| (b.value, pos(b))),
        any_authenticated: r
            .allow_any_authenticated_user
            .as_ref()
            .map(|b| (b.value, pos(b))),
    };
    let policy = compile_policy(&input, &mut cx.errs);

    let client = match UpstreamClient::new(&UpstreamTls {
        custom_ca,
        server_name,
        skip_verify: tls_skip_verify,
    }) {
        Ok(c) => Some(c),
        Err(e) => {
            cx.errs
                .at(rpos, format!("cannot set up TLS to the upstream: {e}"));
            None
        }
    };
    if cx.errs.list.len() > before {
        return None;
    }
    let (from, upstreams, path, client) = (from?, upstreams?, path?, client?);
    let name = r.name.as_ref().map_or_else(
        || format!("{}{}", from.origin_string(), path.describe()),
        |n| n.value.clone(),
    );
    // What the route sets is the route's: a client's copy under any spelling is stripped.
    let owned_headers = jwt_claims_headers
        .iter()
        .map(|(h, _)| h)
        .chain(set_request_headers.iter().map(|(h, _)| h))
        .map(crate::http::hop::folded_name)
        .collect();
    Some(Route {
        name,
        from,
        path,
        upstreams,
        next: std::sync::atomic::AtomicUsize::new(0),
        prefix_rewrite,
        preserve_host_header: r.preserve_host_header.unwrap_or(false),
        allow_websockets: r.allow_websockets.unwrap_or(false),
        timeout: (!timeout.is_zero()).then_some(timeout),
        idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
        set_request_headers,
        remove_request_headers,
        pass_identity_headers,
        owned_headers,
        jwt_claims_headers,
        policy,
        client,
        line: rpos.line,
        index: 0,
    })
}

fn from_url(cx: &mut Ctx<'_>, v: &Spanned<String>) -> Option<FromMatch> {
    let u = match url::Url::parse(&v.value) {
        Ok(u) => u,
        Err(e) => {
            cx.errs.at(
                pos(v),
                format!(
                    "from: `{}` is not a URL ({e}); write it as https://host.example.com",
                    v.value
                ),
            );
            return None;
        }
    };
    let https = match u.scheme() {
        "https" => true,
        "http" => false,
        s => {
            cx.errs.at(
                pos(v),
                format!("from: scheme `{s}` is not served; use https://"),
            );
            return None;
        }
    };
    let Some(host) = u.host_str().filter(|h| !h.is_empty()) else {
        cx.errs.at(pos(v), "from: needs a host name");
        return None;
    };
    if u.path() != "/" || u.query().is_some() || u.fragment().is_some() {
        cx.errs.at(
            pos(v),
            "from: only scheme, host and port; match paths with `prefix`, `path` or `regex`",
        );
        return None;
    }
    if !u.username().is_empty() || u.password().is_some() {
        cx.errs
            .at(pos(v), "from: must not carry a user name or password");
        return None;
    }
    Some(FromMatch {
        https,
        host: host.trim_end_matches('.').to_ascii_lowercase(),
        port: u.port(),
    })
}

fn to_urls(cx: &mut Ctx<'_>, r: &RawRoute) -> Option<Vec<Upstream>> {
    let list = r.to.value.to_vec();
    if list.is_empty() {
        cx.errs.at(pos(&r.to), "to: give at least one upstream URL");
        return None;
    }
    let mut out = Vec::new();
    for s in list {
        let u = match url::Url::parse(&s) {
            Ok(u) => u,
            Err(e) => {
                cx.errs
                    .at(pos(&r.to), format!("to: `{s}` is not a URL ({e})"));
                continue;
            }
        };
        if u.scheme() != "http" && u.scheme() != "https" {
            cx.errs.at(
                pos(&r.to),
                format!("to: `{s}`: upstreams are http:// or https://"),
            );
            continue;
        }
        if u.host_str().is_none_or(str::is_empty)
            || u.query().is_some()
            || u.fragment().is_some()
            || !u.username().is_empty()
        {
            cx.errs.at(
                pos(&r.to),
                format!("to: `{s}`: needs a host, and no query, fragment or user name"),
            );
            continue;
        }
        if crate::http::target::normalize_path(u.path()).as_deref() != Ok(u.path()) {
            // Put in front of every forwarded path: it must not change how that path resolves.
            cx.errs.at(
                pos(&r.to),
                format!("to: `{s}`: the path must be normalized (no `//`, `.` or `..` segments)"),
            );
            continue;
        }
        match Upstream::from_url(&u) {
            Ok(up) => out.push(up),
            Err(e) => cx.errs.at(pos(&r.to), format!("to: `{s}`: {e}")),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Route paths must already be in the form request paths are normalized to, or they could
/// never match (or would match something unexpected).
fn canonical_path(cx: &mut Ctx<'_>, key: &str, v: &Spanned<String>) -> Option<String> {
    match crate::http::target::normalize_path(&v.value) {
        Ok(p) if p == v.value => Some(p),
        Ok(p) => {
            cx.errs.at(
                pos(v),
                format!("{key}: `{}` is not in canonical form; write `{p}`", v.value),
            );
            None
        }
        Err(e) => {
            cx.errs.at(pos(v), format!("{key}: `{}`: {e}", v.value));
            None
        }
    }
}

fn as_list(v: &Option<Spanned<Vec<String>>>) -> Option<(&[String], Pos)> {
    v.as_ref().map(|s| (s.value.as_slice(), pos(s)))
}
