//! Raw YAML structs → typed, validated values. Everything a request needs is computed here,
//! once; handlers never parse a config string again.

use http::HeaderName;
use serde_saphyr::Spanned;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod cases;
mod choices;
mod route;
mod settings;

use crate::config::duration;
use crate::config::env::env_name;
use crate::config::error::{Errors, Pos};
use crate::config::raw::RawConfig;
use crate::config::settings::*;
use crate::route::Route;

/// Everything compiled from one config file.
pub struct Compiled {
    pub settings: Settings,
    pub routes: Vec<Route>,
    /// Things worth a warning at load time (insecure choices, defaults taken).
    pub warnings: Vec<String>,
    /// Files the config names (certificates, keys, secrets, CAs): a change reloads.
    pub files: Vec<PathBuf>,
    /// `tests:`, run once the routes are built (`Runtime::build`).
    pub tests: Vec<crate::explain::Case>,
}

pub(super) struct Ctx<'a> {
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
    let settings = settings::settings(&raw, &mut cx);
    let tests = cases::cases(&raw, &mut cx);
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
                if let Some(route) = route::route(&r.value, pos(r), &raw, &mut cx) {
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
    grant_warnings(&routes, &mut cx);
    tcp_into_http_upstreams(&routes, &mut cx);
    // A name Portcullis sets on any route is never taken from a client on any route: a public
    // route to the same upstream would otherwise carry a forged copy of another route's
    // identity or secret header.
    // `Cookie` is the exception: a route that sets it owns that route's whole header, and on
    // every other route only the cookie names it sets are stripped.
    let mut owned: Vec<HeaderName> = Vec::new();
    let mut owned_cookies: Vec<String> = Vec::new();
    for r in &routes {
        for h in &r.owned_headers {
            if !owned.contains(h) && h != http::header::COOKIE {
                owned.push(h.clone());
            }
        }
        for c in &r.owned_cookies {
            if !owned_cookies.contains(c) {
                owned_cookies.push(c.clone());
            }
        }
    }
    for r in &mut routes {
        let sets_cookie = r.owned_headers.contains(&http::header::COOKIE);
        r.owned_headers.clone_from(&owned);
        if sets_cookie {
            r.owned_headers.push(http::header::COOKIE);
        }
        r.owned_cookies.clone_from(&owned_cookies);
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
        tests,
    })
}

pub(super) fn socket_addr(cx: &mut Ctx<'_>, key: &str, v: &Spanned<String>) -> Option<SocketAddr> {
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

pub(super) fn dur(
    cx: &mut Ctx<'_>,
    key: &str,
    v: Option<&Spanned<String>>,
    default: Duration,
) -> Duration {
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
pub(super) struct Secret {
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
pub(super) fn secret_from(
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

/// A count that must be at least 1 (`max_connections`…), or `default` when not set.
pub(super) fn positive(
    cx: &mut Ctx<'_>,
    key: &str,
    v: Option<&Spanned<u32>>,
    default: usize,
) -> usize {
    match v {
        None => default,
        Some(n) if n.value == 0 => {
            cx.top(key, pos(n), format!("{key} must be at least 1"));
            default
        }
        Some(n) => n.value as usize,
    }
}

/// Route paths must already be in the form request paths are normalized to, or they could
/// never match (or would match something unexpected).
pub(super) fn canonical_path(cx: &mut Ctx<'_>, key: &str, v: &Spanned<String>) -> Option<String> {
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

pub(super) fn as_list(v: &Option<Spanned<Vec<String>>>) -> Option<(&[String], Pos)> {
    v.as_ref().map(|s| (s.value.as_slice(), pos(s)))
}

/// A TCP route to a `host:port` that an HTTP route forwards to would let whoever opens the
/// tunnel speak HTTP to that upstream from Portcullis's address, with any identity headers
/// (an upstream that trusts Portcullis, as OpenClaw's gateway does, would believe them): an
/// error, at the TCP route.
fn tcp_into_http_upstreams(routes: &[crate::route::Route], cx: &mut Ctx<'_>) {
    let addr = |u: &crate::upstream::Upstream| {
        let default = if u.scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        (
            u.authority
                .host()
                .trim_end_matches('.')
                .to_ascii_lowercase(),
            u.authority.port_u16().unwrap_or(default),
        )
    };
    for t in routes.iter().filter(|r| r.from.tcp) {
        for tu in t.targets.iter().flat_map(|x| x.upstreams.iter()) {
            let reached = addr(tu);
            let served = routes.iter().filter(|r| !r.from.tcp).find(|h| {
                h.targets
                    .iter()
                    .flat_map(|x| x.upstreams.iter())
                    .any(|u| addr(u) == reached)
            });
            if let Some(h) = served {
                cx.errs.at(
                    crate::config::error::Pos {
                        line: t.line,
                        col: t.col,
                    },
                    format!(
                        "route `{}` tunnels to {}:{}, which route `{}` (line {}) forwards HTTP to: a tunnel there could send that upstream any request as Portcullis, identity headers included; give TCP routes only services no HTTP route serves",
                        t.name, reached.0, reached.1, h.name, h.line
                    ),
                );
            }
        }
    }
}

/// A header a grant sets is only a cap when every request to that upstream carries it: for
/// OpenClaw's `X-OpenClaw-Scopes`, absent means no cap at all. Warns about a grant of a route
/// that leaves out a name its other grants set, and about a route to the same upstream that
/// sets none of it.
fn grant_warnings(routes: &[crate::route::Route], cx: &mut Ctx<'_>) {
    use http::HeaderName;
    let source = cx.errs.source.to_string();
    let mut granted: Vec<(HeaderName, usize)> = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let names: Vec<&HeaderName> = {
            let mut v: Vec<&HeaderName> = r.grants.iter().flatten().map(|(n, _)| n).collect();
            v.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            v.dedup();
            v
        };
        for (g, headers) in r.grants.iter().enumerate() {
            for n in &names {
                if !headers.iter().any(|(h, _)| h == *n) {
                    let at = r.policy.grants.get(g).map(|c| c.pos).unwrap_or_default();
                    cx.warnings.push(format!(
                        "{source}:{}:{}: this grant does not set `{n}`, which other grants of the route set: the users it picks get no `{n}` (for X-OpenClaw-Scopes, no cap); set it, to \"\" for none",
                        at.line, at.col
                    ));
                }
            }
        }
        for n in names {
            if !granted.iter().any(|(h, _)| h == n) {
                granted.push((n.clone(), i));
            }
        }
    }
    for (name, by) in &granted {
        let g = &routes[*by];
        let upstreams: Vec<&str> = g
            .targets
            .iter()
            .flat_map(|t| t.upstreams.iter().map(|u| &*u.pool_key))
            .collect();
        for r in routes {
            let sets = r.grants.iter().flatten().any(|(h, _)| h == name)
                || r.set_request_headers.iter().any(|(h, _)| h == name);
            let shares = r
                .targets
                .iter()
                .flat_map(|t| t.upstreams.iter())
                .any(|u| upstreams.contains(&&*u.pool_key));
            if shares && !sets {
                cx.warnings.push(format!(
                    "{source}:{}: route `{}` reaches the same upstream as route `{}` (line {}), which grants `{name}`, and sets no `{name}`: its requests go without it (for X-OpenClaw-Scopes, no cap)",
                    r.line, r.name, g.name, g.line
                ));
            }
        }
    }
}
