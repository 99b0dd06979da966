//! One route: `from`, `to`, the path matcher and rewrite, timeouts, TLS to the upstream,
//! header edits, and its policy.

use http::{HeaderName, HeaderValue};
use serde_saphyr::Spanned;
use std::time::Duration;

use crate::config::error::Pos;
use crate::config::raw::{RawConfig, RawRoute};
use crate::policy::parse::{compile as compile_policy, PolicyInput};
use crate::route::{FromMatch, PathMatch, Route};
use crate::upstream::{UpstreamClient, UpstreamTls};

use super::{as_list, canonical_path, choices, dur, pos, Ctx};

/// A header-name → value map (`set_request_headers`, `jwt_claims_headers`), names checked.
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

pub(super) fn route(r: &RawRoute, rpos: Pos, raw: &RawConfig, cx: &mut Ctx<'_>) -> Option<Route> {
    let before = cx.errs.list.len();
    let from = from_url(cx, &r.from);
    let tcp = from.as_ref().is_some_and(|f| f.tcp);
    if tcp {
        tcp_keys(cx, r, rpos);
    }
    let targets = choices::targets(cx, &r.to, tcp);

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

    let set_request_headers = match &r.set_request_headers {
        Some(m) => {
            let pairs = m
                .value
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            choices::settable_headers(cx, "set_request_headers", pairs, pos(m))
        }
        None => Vec::new(),
    };
    let (grants, grant_choices) = match &r.grants {
        Some(node) => choices::grants(cx, node).unwrap_or_default(),
        None => (Vec::new(), Vec::new()),
    };
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
    let (targets, target_choices) = match targets {
        Some((t, c)) => (Some(t), c),
        None => (None, Vec::new()),
    };
    let policy = compile_policy(&input, &mut cx.errs).with_choices(target_choices, grant_choices);
    // Tried beside the policy on every request, never enforced (same language, `policy` only).
    let shadow = r.shadow_policy.as_ref().map(|node| {
        compile_policy(
            &PolicyInput {
                policy: Some(node),
                allowed_users: None,
                allowed_domains: None,
                allowed_groups: None,
                public: None,
                any_authenticated: None,
            },
            &mut cx.errs,
        )
    });

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
    let (from, targets, path, client) = (from?, targets?, path?, client?);
    let name = r.name.as_ref().map_or_else(
        || format!("{}{}", from.origin_string(), path.describe()),
        |n| n.value.clone(),
    );
    // Cookie names the route sets, in `set_request_headers` or in any grant.
    let owned_cookies = cookie_names(set_request_headers.iter().chain(grants.iter().flatten()));
    // What the route sets is the route's: a client's copy under any spelling is stripped.
    let owned_headers = jwt_claims_headers
        .iter()
        .map(|(h, _)| h)
        .chain(set_request_headers.iter().map(|(h, _)| h))
        .chain(grants.iter().flatten().map(|(h, _)| h))
        .map(crate::http::hop::folded_name)
        .collect();
    Some(Route {
        name,
        from,
        path,
        targets,
        grants,
        prefix_rewrite,
        preserve_host_header: r.preserve_host_header.unwrap_or(false),
        allow_websockets: r.allow_websockets.unwrap_or(false),
        timeout: (!timeout.is_zero()).then_some(timeout),
        idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
        set_request_headers,
        remove_request_headers,
        pass_identity_headers,
        owned_headers,
        owned_cookies,
        jwt_claims_headers,
        policy,
        shadow,
        client,
        line: rpos.line,
        col: rpos.col,
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
    let (https, tcp) = match u.scheme() {
        "https" => (true, false),
        "http" => (false, false),
        "tcp+https" => (true, true),
        "tcp+http" => (false, true),
        s => {
            cx.errs.at(
                pos(v),
                format!("from: scheme `{s}` is not served; use https:// (or tcp+https:// for a TCP route)"),
            );
            return None;
        }
    };
    if tcp && matches!(u.port(), None | Some(0)) {
        cx.errs.at(
            pos(v),
            "from: a TCP route names the port it reaches, as in tcp+https://ssh.example.com:22",
        );
        return None;
    }
    let Some(host) = u.host_str().filter(|h| !h.is_empty()) else {
        cx.errs.at(pos(v), "from: needs a host name");
        return None;
    };
    let no_path = u.path() == "/" || (tcp && u.path().is_empty());
    if !no_path || u.query().is_some() || u.fragment().is_some() {
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
        tcp,
        host: host.trim_end_matches('.').to_ascii_lowercase(),
        port: u.port(),
    })
}

/// The names of the cookies a route sets in its `Cookie` header.
fn cookie_names<'a>(set: impl Iterator<Item = &'a (HeaderName, HeaderValue)>) -> Vec<String> {
    set.filter(|(n, _)| n == http::header::COOKIE)
        .flat_map(|(_, v)| crate::http::cookie::pairs(v.as_bytes()))
        .map(|c| {
            let n = &c[..memchr::memchr(b'=', c).unwrap_or(c.len())];
            String::from_utf8_lossy(n.trim_ascii()).into_owned()
        })
        .collect()
}

/// Keys that say how HTTP is forwarded mean nothing on a TCP route: refused, not ignored.
fn tcp_keys(cx: &mut Ctx<'_>, r: &RawRoute, rpos: Pos) {
    let set = [
        ("prefix", r.prefix.is_some()),
        ("path", r.path.is_some()),
        ("regex", r.regex.is_some()),
        ("prefix_rewrite", r.prefix_rewrite.is_some()),
        ("preserve_host_header", r.preserve_host_header.is_some()),
        ("allow_websockets", r.allow_websockets.is_some()),
        ("set_request_headers", r.set_request_headers.is_some()),
        ("remove_request_headers", r.remove_request_headers.is_some()),
        ("pass_identity_headers", r.pass_identity_headers.is_some()),
        ("jwt_claims_headers", r.jwt_claims_headers.is_some()),
        ("grants", r.grants.is_some()),
        ("tls_custom_ca", r.tls_custom_ca.is_some()),
        ("tls_server_name", r.tls_server_name.is_some()),
        ("tls_skip_verify", r.tls_skip_verify.is_some()),
        ("idle_timeout", r.idle_timeout.is_some()),
        ("timeout", r.timeout.is_some()),
    ];
    for (key, present) in set {
        if present {
            cx.errs.at(
                rpos,
                format!("`{key}` is for HTTP routes; a TCP route (tcp+https://) relays bytes and takes `to: tcp://host:port` and the policy keys"),
            );
        }
    }
}
