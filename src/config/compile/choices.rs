//! A route's `to` — one URL, a list, or entries chosen by who signed in — and its `grants`
//! (request headers set by the policy language). Each entry's `when` is compiled by the policy
//! parser; the choice itself is made by the one evaluator (`policy::eval`).

use http::{HeaderName, HeaderValue};

use crate::config::error::Pos;
use crate::config::node::{Node, NodeKind};
use crate::policy::parse::condition;
use crate::policy::Choice;
use crate::route::{SetHeaders, Target};
use crate::upstream::Upstream;

use super::Ctx;

const TO_SHAPE: &str =
    "to: give an upstream URL, a list of them, or a list of `{when, to}` entries";

/// The route's `to` entries and, when they are chosen by `when`, their conditions (empty for
/// a plain URL or list: it serves everyone).
pub(super) fn targets(
    cx: &mut Ctx<'_>,
    node: &Node,
    tcp: bool,
) -> Option<(Vec<Target>, Vec<Choice>)> {
    match &node.kind {
        NodeKind::Str(_) => Some((vec![Target::new(urls(cx, node, tcp)?)], Vec::new())),
        NodeKind::Seq(items) if items.iter().all(|i| matches!(i.kind, NodeKind::Str(_))) => {
            Some((vec![Target::new(urls(cx, node, tcp)?)], Vec::new()))
        }
        NodeKind::Seq(items) if items.iter().all(|i| matches!(i.kind, NodeKind::Map(_))) => {
            let before = cx.errs.list.len();
            let mut targets = Vec::new();
            let mut choices = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let entry = Entry::read(cx, "to", item, &["when", "to"]);
                default_last(cx, &entry, i, items.len(), "to");
                let Some(to) = entry.value("to") else {
                    cx.errs.at(item.pos, "a `to` entry needs `to`: the upstream URL (or list of them) for the users its `when` picks");
                    continue;
                };
                if let (Some(u), Some(when)) = (urls(cx, to, tcp), entry.when(cx)) {
                    targets.push(Target::new(u));
                    choices.push(Choice::new(when, item.pos));
                }
            }
            (cx.errs.list.len() == before).then_some((targets, choices))
        }
        _ => {
            cx.errs.at(node.pos, TO_SHAPE);
            None
        }
    }
}

/// The route's grants: each one's headers, and their conditions.
pub(super) fn grants(cx: &mut Ctx<'_>, node: &Node) -> Option<(Vec<SetHeaders>, Vec<Choice>)> {
    let NodeKind::Seq(items) = &node.kind else {
        cx.errs.at(
            node.pos,
            "grants: give a list of `{when, set_request_headers}` entries",
        );
        return None;
    };
    if items.is_empty() {
        cx.errs.at(
            node.pos,
            "grants: the list is empty; give `{when, set_request_headers}` entries or remove the key",
        );
        return None;
    }
    let before = cx.errs.list.len();
    let mut grants = Vec::new();
    let mut choices = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let entry = Entry::read(cx, "grants", item, &["when", "set_request_headers"]);
        default_last(cx, &entry, i, items.len(), "grants");
        let Some(set) = entry.value("set_request_headers") else {
            cx.errs.at(
                item.pos,
                "a grant needs `set_request_headers`: the headers it sets",
            );
            continue;
        };
        let headers = string_map(cx, set)
            .map(|pairs| settable_headers(cx, "grants: set_request_headers", pairs, set.pos));
        if let (Some(h), Some(when)) = (headers, entry.when(cx)) {
            grants.push(h);
            choices.push(Choice::new(when, item.pos));
        }
    }
    if !choices.is_empty() && choices.iter().all(|c| c.when.is_some()) {
        // For OpenClaw an absent X-OpenClaw-Scopes means no cap at all.
        cx.warnings.push(format!(
            "{}:{}:{}: grants: no entry without `when`, so users no grant picks get none of these headers (for OpenClaw's X-OpenClaw-Scopes, absent means no cap); end the list with a default entry",
            cx.errs.source, node.pos.line, node.pos.col
        ));
    }
    (cx.errs.list.len() == before).then_some((grants, choices))
}

/// One entry of a `to` list or of `grants`, its keys checked.
struct Entry<'n> {
    pos: Pos,
    keys: Vec<(&'n str, &'n Node)>,
}

impl<'n> Entry<'n> {
    fn read(cx: &mut Ctx<'_>, list: &str, item: &'n Node, allowed: &[&str]) -> Entry<'n> {
        let mut keys = Vec::new();
        if let NodeKind::Map(entries) = &item.kind {
            for (k, kpos, v) in entries {
                if allowed.contains(&k.as_str()) {
                    keys.push((k.as_str(), v));
                } else {
                    cx.errs.at(
                        *kpos,
                        format!(
                            "unknown key `{k}` in a `{list}` entry (expected {})",
                            allowed.join(", ")
                        ),
                    );
                }
            }
        }
        Entry {
            pos: item.pos,
            keys,
        }
    }

    fn value(&self, key: &str) -> Option<&'n Node> {
        self.keys.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// `Some(None)` for an entry without `when` (everyone); `None` when `when` is broken.
    fn when(&self, cx: &mut Ctx<'_>) -> Option<Option<crate::policy::Expr>> {
        match self.value("when") {
            None => Some(None),
            Some(w) => condition(w, &mut cx.errs).map(Some),
        }
    }
}

/// An entry without `when` matches everyone: anything after it could never apply.
fn default_last(cx: &mut Ctx<'_>, entry: &Entry<'_>, i: usize, n: usize, list: &str) {
    if entry.value("when").is_none() && i + 1 < n {
        cx.errs.at(
            entry.pos,
            format!("this `{list}` entry has no `when`, so it matches everyone and the entries after it never apply: put it last"),
        );
    }
}

/// A mapping of strings (header name → value), positions kept for errors.
fn string_map(cx: &mut Ctx<'_>, node: &Node) -> Option<Vec<(String, String)>> {
    let NodeKind::Map(entries) = &node.kind else {
        cx.errs.at(
            node.pos,
            format!(
                "set_request_headers takes a mapping of header names to values, not {}",
                node.describe()
            ),
        );
        return None;
    };
    let mut out = Vec::new();
    for (k, _, v) in entries {
        match &v.kind {
            NodeKind::Str(s) => out.push((k.clone(), s.clone())),
            NodeKind::Num(n) => cx.errs.at(
                v.pos,
                format!("the value of `{k}` is read as the number {n}: quote it (\"…\") to send it as written"),
            ),
            _ => cx.errs.at(
                v.pos,
                format!("the value of `{k}` must be a string, not {}", v.describe()),
            ),
        }
    }
    Some(out)
}

/// The upstream URLs of a `to` (one string or a list of strings), each checked.
fn urls(cx: &mut Ctx<'_>, node: &Node, tcp: bool) -> Option<Vec<Upstream>> {
    let list: Vec<(&str, Pos)> = match &node.kind {
        NodeKind::Str(s) => vec![(s.as_str(), node.pos)],
        NodeKind::Seq(items) => items
            .iter()
            .filter_map(|i| match &i.kind {
                NodeKind::Str(s) => Some((s.as_str(), i.pos)),
                _ => {
                    cx.errs.at(i.pos, TO_SHAPE);
                    None
                }
            })
            .collect(),
        _ => {
            cx.errs.at(node.pos, TO_SHAPE);
            return None;
        }
    };
    if list.is_empty() {
        cx.errs.at(node.pos, "to: give at least one upstream URL");
        return None;
    }
    let before = cx.errs.list.len();
    let mut out = Vec::new();
    for (s, at) in list {
        let u = if tcp {
            tcp_upstream(cx, s, at)
        } else {
            upstream(cx, s, at)
        };
        if let Some(u) = u {
            out.push(u);
        }
    }
    (cx.errs.list.len() == before).then_some(out)
}

/// `tcp://host:port`, the target of a TCP route.
fn tcp_upstream(cx: &mut Ctx<'_>, s: &str, at: Pos) -> Option<Upstream> {
    let u = match url::Url::parse(s) {
        Ok(u) if u.scheme() == "tcp" => u,
        Ok(_) => {
            cx.errs.at(
                at,
                format!("to: `{s}`: a TCP route's target is tcp://host:port"),
            );
            return None;
        }
        Err(e) => {
            cx.errs.at(at, format!("to: `{s}` is not a URL ({e})"));
            return None;
        }
    };
    let (Some(host), Some(_)) = (
        u.host_str().filter(|h| !h.is_empty()),
        u.port().filter(|&p| p != 0),
    ) else {
        cx.errs.at(
            at,
            format!("to: `{s}`: needs a host and a port, as in tcp://openclaw-gateway:22"),
        );
        return None;
    };
    if !(u.path().is_empty() || u.path() == "/") || u.query().is_some() || !u.username().is_empty()
    {
        cx.errs.at(at, format!("to: `{s}`: only a host and a port"));
        return None;
    }
    let _ = host;
    match Upstream::from_tcp_url(&u) {
        Ok(up) => Some(up),
        Err(e) => {
            cx.errs.at(at, format!("to: `{s}`: {e}"));
            None
        }
    }
}

fn upstream(cx: &mut Ctx<'_>, s: &str, at: Pos) -> Option<Upstream> {
    let u = match url::Url::parse(s) {
        Ok(u) => u,
        Err(e) => {
            cx.errs.at(at, format!("to: `{s}` is not a URL ({e})"));
            return None;
        }
    };
    if u.scheme() != "http" && u.scheme() != "https" {
        cx.errs
            .at(at, format!("to: `{s}`: upstreams are http:// or https://"));
        return None;
    }
    if u.host_str().is_none_or(str::is_empty)
        || u.query().is_some()
        || u.fragment().is_some()
        || !u.username().is_empty()
    {
        cx.errs.at(
            at,
            format!("to: `{s}`: needs a host, and no query, fragment or user name"),
        );
        return None;
    }
    if crate::http::target::normalize_path(u.path()).as_deref() != Ok(u.path()) {
        // Put in front of every forwarded path: it must not change how that path resolves.
        cx.errs.at(
            at,
            format!("to: `{s}`: the path must be normalized (no `//`, `.` or `..` segments)"),
        );
        return None;
    }
    match Upstream::from_url(&u) {
        Ok(up) => Some(up),
        Err(e) => {
            cx.errs.at(at, format!("to: `{s}`: {e}"));
            None
        }
    }
}

/// Headers a route sets (`set_request_headers`, a grant's): names and values checked, and
/// none that Portcullis writes itself.
pub(super) fn settable_headers(
    cx: &mut Ctx<'_>,
    key: &str,
    pairs: Vec<(String, String)>,
    at: Pos,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for (name, value) in pairs {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            cx.errs
                .at(at, format!("{key}: `{name}` is not a valid header name"));
            continue;
        };
        let folded = crate::http::hop::folded_name(&name);
        if folded == http::header::HOST
            || folded == http::header::CONTENT_LENGTH
            || crate::http::hop::is_hop_by_hop(&folded)
        {
            // Written by Portcullis itself: a value here would be ignored or break framing.
            cx.errs.at(
                at,
                format!(
                    "{key}: `{name}` is Portcullis's to write (the upstream's \
                     Host is the `to` URL's, or the client's with preserve_host_header; \
                     framing and hop-by-hop headers belong to each connection)"
                ),
            );
            continue;
        }
        match HeaderValue::from_str(&value) {
            Ok(v) => out.push((name, v)),
            Err(_) => cx.errs.at(
                at,
                format!("{key}: the value of `{name}` is not a valid header value"),
            ),
        }
    }
    out
}
