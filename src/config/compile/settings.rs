//! The global keys: listeners, certificates and ACME, sign-in, cookies, logs, limits.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::raw::RawConfig;
use crate::config::settings::*;

use super::{dur, pos, positive, secret_from, socket_addr, Ctx};

/// The global settings, each checked where it is written.
pub(super) fn settings(raw: &RawConfig, cx: &mut Ctx<'_>) -> Settings {
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
        |s| match crate::config::keys::SigningKey::from_pem(&s.value) {
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
        session_store: secret_from(
            cx,
            "session_store",
            raw.session_store.as_ref(),
            raw.session_store_file.as_ref(),
        )
        .and_then(
            |s| match crate::config::settings::StoreUrl::parse(&s.value) {
                Ok(u) => Some(u),
                Err(e) => {
                    s.error(cx, &e);
                    None
                }
            },
        ),
    }
}

/// `autocert` and its companions: the ACME server, contacts, cache and trust.
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

/// The identity provider, when `idp_provider_url` is set.
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
