//! YAML → [`Policy`]. The shorthands (`allowed_users`, `allow_any_authenticated_user`, ...)
//! are rewritten into ordinary rules here, so the evaluator knows only one language.

use ipnet::IpNet;
use std::sync::Arc;

use super::{ClaimMatch, Criterion, Expr, ListMatch, Policy, Rule, RuleOrigin, StrMatch};
use crate::config::error::{Errors, Pos};
use crate::config::node::{Node, NodeKind};

/// A list-valued shorthand as written: its values and where the key stands.
pub type Shorthand<'a> = Option<(&'a [String], Pos)>;

/// The policy-bearing keys of one route.
#[derive(Default)]
pub struct PolicyInput<'a> {
    pub policy: Option<&'a Node>,
    pub allowed_users: Shorthand<'a>,
    pub allowed_domains: Shorthand<'a>,
    pub allowed_groups: Shorthand<'a>,
    pub public: Option<(bool, Pos)>,
    pub any_authenticated: Option<(bool, Pos)>,
}

const CRITERIA: &str = "authenticated_user, email, domain, user, groups, claim/NAME, http_method, http_path, source_ip";
const STR_MATCHERS: &str = "is, starts_with, ends_with, contains, in";

/// Compiles a route's policy keys; problems are added to `errs`.
pub fn compile(input: &PolicyInput<'_>, errs: &mut Errors<'_>) -> Policy {
    let mut rules = Vec::new();
    if let Some((true, pos)) = input.public {
        let others = input.policy.is_some()
            || input.allowed_users.is_some()
            || input.allowed_domains.is_some()
            || input.allowed_groups.is_some()
            || matches!(input.any_authenticated, Some((true, _)));
        if others {
            errs.at(
                pos,
                "allow_public_unauthenticated_access lets everyone in and cannot be combined with other policy keys",
            );
        }
        rules.push(shorthand_rule(
            Expr::Always,
            "allow_public_unauthenticated_access",
            pos,
        ));
    }
    if let Some((true, pos)) = input.any_authenticated {
        rules.push(shorthand_rule(
            Expr::Crit(Criterion::AuthenticatedUser),
            "allow_any_authenticated_user",
            pos,
        ));
    }
    if let Some((users, pos)) = input.allowed_users {
        let mut any = Vec::new();
        for u in users {
            // Pomerium matches allowed_users against the email or the user id.
            any.push(Expr::Crit(Criterion::Email(StrMatch::is(
                &u.to_lowercase(),
            ))));
            any.push(Expr::Crit(Criterion::User(StrMatch::is(u))));
        }
        push_list_rule(&mut rules, any, "allowed_users", pos, errs);
    }
    if let Some((domains, pos)) = input.allowed_domains {
        let mut any = Vec::new();
        for d in domains {
            if d.contains('@') || d.is_empty() {
                errs.at(pos, format!("allowed_domains: `{d}` is not a domain"));
            }
            any.push(Expr::Crit(Criterion::Domain(StrMatch::is(
                &d.to_lowercase(),
            ))));
        }
        push_list_rule(&mut rules, any, "allowed_domains", pos, errs);
    }
    if let Some((groups, pos)) = input.allowed_groups {
        let any = groups
            .iter()
            .map(|g| {
                Expr::Crit(Criterion::Groups(ListMatch {
                    has: g.as_str().into(),
                }))
            })
            .collect();
        push_list_rule(&mut rules, any, "allowed_groups", pos, errs);
    }
    if let Some(node) = input.policy {
        match &node.kind {
            NodeKind::Seq(items) => {
                if items.is_empty() {
                    errs.at(node.pos, "policy is an empty list: write at least one rule");
                }
                for item in items {
                    if let Some(r) = rule(item, errs) {
                        rules.push(r);
                    }
                }
            }
            NodeKind::Map(_) => {
                if let Some(r) = rule(node, errs) {
                    rules.push(r);
                }
            }
            _ => errs.at(
                node.pos,
                format!(
                    "policy must be a rule (allow/deny) or a list of rules, not {}",
                    node.describe()
                ),
            ),
        }
    }
    Policy::new(rules)
}

impl StrMatch {
    pub fn is(v: &str) -> StrMatch {
        StrMatch {
            is: Some(v.into()),
            ..StrMatch::default()
        }
    }
}

fn shorthand_rule(allow: Expr, key: &'static str, pos: Pos) -> Rule {
    Rule::new(Some(allow), None, RuleOrigin { key, pos })
}

fn push_list_rule(
    rules: &mut Vec<Rule>,
    any: Vec<Expr>,
    key: &'static str,
    pos: Pos,
    errs: &mut Errors<'_>,
) {
    if any.is_empty() {
        errs.at(
            pos,
            format!("{key} is empty: list at least one value or remove the key"),
        );
        return;
    }
    rules.push(shorthand_rule(Expr::Or(any), key, pos));
}

fn rule(node: &Node, errs: &mut Errors<'_>) -> Option<Rule> {
    let NodeKind::Map(entries) = &node.kind else {
        errs.at(
            node.pos,
            format!(
                "a policy rule is a mapping with `allow` and/or `deny`, not {}",
                node.describe()
            ),
        );
        return None;
    };
    let mut allow = None;
    let mut deny = None;
    for (key, kpos, value) in entries {
        match key.as_str() {
            "allow" => allow = body(value, errs),
            "deny" => deny = body(value, errs),
            other => errs.at(
                *kpos,
                format!("unknown policy action `{other}` (expected allow or deny)"),
            ),
        }
    }
    if entries.is_empty() {
        errs.at(node.pos, "a policy rule needs `allow` or `deny`");
    }
    Some(Rule::new(
        allow,
        deny,
        RuleOrigin {
            key: "policy",
            pos: node.pos,
        },
    ))
}

/// A `when` (of a `to` entry or a grant): what an allow block takes — logical operators — or
/// criteria written directly (`when: {groups: {has: admins}}`); all of them must hold.
pub fn condition(node: &Node, errs: &mut Errors<'_>) -> Option<Expr> {
    let NodeKind::Map(entries) = &node.kind else {
        errs.at(
            node.pos,
            format!(
                "`when` takes criteria (`groups: {{ has: admins }}`) or logical operators (and, or, not, nor), not {}",
                node.describe()
            ),
        );
        return None;
    };
    if entries.is_empty() {
        errs.at(
            node.pos,
            "`when` is empty: give at least one criterion, or leave `when` out to match everyone",
        );
        return None;
    }
    let before = errs.list.len();
    let mut all = Vec::with_capacity(entries.len());
    for (key, kpos, value) in entries {
        match operator(key, *kpos, value, errs) {
            Some(Some(e)) => all.push(e),
            Some(None) => {}
            None => {
                if let Some(c) = criterion(key, *kpos, value, errs) {
                    all.push(Expr::Crit(c));
                }
            }
        }
    }
    if errs.list.len() > before {
        return None;
    }
    Some(if all.len() == 1 {
        all.remove(0)
    } else {
        Expr::And(all)
    })
}

/// An action's body: one or more operators, all of which must hold.
fn body(node: &Node, errs: &mut Errors<'_>) -> Option<Expr> {
    let NodeKind::Map(entries) = &node.kind else {
        errs.at(
            node.pos,
            format!(
                "expected a logical operator (and, or, not, nor), not {}",
                node.describe()
            ),
        );
        return None;
    };
    if entries.is_empty() {
        errs.at(node.pos, "expected a logical operator (and, or, not, nor)");
        return None;
    }
    let mut ops = Vec::new();
    for (key, kpos, value) in entries {
        match operator(key, *kpos, value, errs) {
            Some(Some(e)) => ops.push(e),
            Some(None) => {}
            None => errs.at(
                *kpos,
                format!("unknown logical operator `{key}` (expected and, or, not, nor)"),
            ),
        }
    }
    Some(if ops.len() == 1 {
        ops.remove(0)
    } else {
        Expr::And(ops)
    })
}

/// `None` if `key` is no operator; `Some(None)` if it is one but its list is broken.
fn operator(key: &str, kpos: Pos, value: &Node, errs: &mut Errors<'_>) -> Option<Option<Expr>> {
    let make: fn(Vec<Expr>) -> Expr = match key {
        "and" => Expr::And,
        "or" => Expr::Or,
        "not" => Expr::Not,
        "nor" => Expr::Nor,
        _ => return None,
    };
    let NodeKind::Seq(items) = &value.kind else {
        errs.at(
            value.pos,
            format!("`{key}` takes a list of criteria, not {}", value.describe()),
        );
        return Some(None);
    };
    if items.is_empty() {
        errs.at(
            kpos,
            format!("`{key}` has an empty list: give at least one criterion"),
        );
        return Some(None);
    }
    let mut list = Vec::with_capacity(items.len());
    for item in items {
        if let Some(e) = item_expr(item, errs) {
            list.push(e);
        }
    }
    Some(Some(make(list)))
}

/// One list item: a criterion, or a nested operator.
fn item_expr(node: &Node, errs: &mut Errors<'_>) -> Option<Expr> {
    let NodeKind::Map(entries) = &node.kind else {
        errs.at(
            node.pos,
            format!(
                "expected a criterion such as `email: {{ is: ... }}`, not {}",
                node.describe()
            ),
        );
        return None;
    };
    if entries.len() != 1 {
        errs.at(
            node.pos,
            "each list item holds exactly one criterion or operator; use `and`/`or` to combine",
        );
        return None;
    }
    let (key, kpos, value) = &entries[0];
    if let Some(op) = operator(key, *kpos, value, errs) {
        return op;
    }
    criterion(key, *kpos, value, errs).map(Expr::Crit)
}

fn criterion(key: &str, kpos: Pos, value: &Node, errs: &mut Errors<'_>) -> Option<Criterion> {
    match key {
        "authenticated_user" => match value.kind {
            NodeKind::Bool(true) => Some(Criterion::AuthenticatedUser),
            _ => {
                errs.at(value.pos, "authenticated_user takes `true`");
                None
            }
        },
        "email" => str_match(key, value, true, errs).map(Criterion::Email),
        "domain" => str_match(key, value, true, errs).map(Criterion::Domain),
        "user" => str_match(key, value, false, errs).map(Criterion::User),
        "http_path" => {
            let m = str_match(key, value, false, errs)?;
            if let Some(p) = m.is.as_deref().or(m.starts_with.as_deref()) {
                if !p.starts_with('/') {
                    errs.at(value.pos, "http_path values start with `/`");
                }
            }
            Some(Criterion::HttpPath(m))
        }
        "groups" => {
            let v = matchers(key, value, &["has"], "has", errs)?;
            let has = single_string(key, "has", v.first()?.1, errs)?;
            Some(Criterion::Groups(ListMatch { has: has.into() }))
        }
        "http_method" => {
            let mut methods = Vec::new();
            for (m, node) in matchers(key, value, &["is", "in"], "is, in", errs)? {
                for s in strings(key, m, node, errs)? {
                    match http::Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
                        Ok(mm) => methods.push(mm),
                        Err(_) => errs.at(node.pos, format!("`{s}` is not an HTTP method")),
                    }
                }
            }
            Some(Criterion::HttpMethod(methods))
        }
        "source_ip" => {
            let mut nets = Vec::new();
            for (m, node) in matchers(key, value, &["is", "in"], "is, in", errs)? {
                for s in strings(key, m, node, errs)? {
                    match parse_net(s) {
                        Some(n) => nets.push(n),
                        None => errs.at(
                            node.pos,
                            format!("`{s}` is not an IP address or CIDR (such as 10.0.0.0/8)"),
                        ),
                    }
                }
            }
            Some(Criterion::SourceIp(nets))
        }
        k if k.starts_with("claim/") => {
            let name = &k["claim/".len()..];
            if name.is_empty() {
                errs.at(kpos, "claim/ needs a claim name, such as claim/department");
                return None;
            }
            let m = match &value.kind {
                NodeKind::Str(s) | NodeKind::Num(s) => ClaimMatch::Has(s.as_str().into()),
                NodeKind::Map(entries) if entries.len() == 1 && entries[0].0 == "has" => {
                    ClaimMatch::Has(single_string(key, "has", &entries[0].2, errs)?.into())
                }
                _ => ClaimMatch::Str(str_match(key, value, false, errs)?),
            };
            Some(Criterion::Claim(Arc::from(name), m))
        }
        other => {
            errs.at(
                kpos,
                format!("unknown criterion `{other}` (expected one of: {CRITERIA})"),
            );
            None
        }
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// The matcher entries of a criterion, each checked against `allowed`.
fn matchers<'n>(
    key: &str,
    value: &'n Node,
    allowed: &[&str],
    hint: &str,
    errs: &mut Errors<'_>,
) -> Option<Vec<(&'n str, &'n Node)>> {
    let NodeKind::Map(entries) = &value.kind else {
        errs.at(
            value.pos,
            format!(
                "`{key}` takes matchers ({hint}), such as `{key}: {{ {}: ... }}`",
                allowed[0]
            ),
        );
        return None;
    };
    if entries.is_empty() {
        errs.at(value.pos, format!("`{key}` needs a matcher ({hint})"));
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (m, mpos, node) in entries {
        if allowed.contains(&m.as_str()) {
            out.push((m.as_str(), node));
        } else {
            ok = false;
            errs.at(
                *mpos,
                format!("`{m}` is not a matcher for `{key}` (use {hint})"),
            );
        }
    }
    ok.then_some(out)
}

fn single_string<'n>(key: &str, m: &str, node: &'n Node, errs: &mut Errors<'_>) -> Option<&'n str> {
    match &node.kind {
        NodeKind::Str(s) | NodeKind::Num(s) if !s.is_empty() => Some(s),
        _ => {
            errs.at(
                node.pos,
                format!("`{key}: {{ {m}: ... }}` takes a non-empty string"),
            );
            None
        }
    }
}

/// `is` takes one string, `in` a non-empty list of them.
fn strings<'n>(key: &str, m: &str, node: &'n Node, errs: &mut Errors<'_>) -> Option<Vec<&'n str>> {
    if m == "in" {
        let NodeKind::Seq(items) = &node.kind else {
            errs.at(node.pos, format!("`{key}: {{ in: ... }}` takes a list"));
            return None;
        };
        if items.is_empty() {
            errs.at(node.pos, format!("`{key}: {{ in: [] }}` is empty"));
            return None;
        }
        items
            .iter()
            .map(|i| single_string(key, m, i, errs))
            .collect()
    } else {
        single_string(key, m, node, errs).map(|s| vec![s])
    }
}

fn str_match(key: &str, value: &Node, lower: bool, errs: &mut Errors<'_>) -> Option<StrMatch> {
    let conv = |s: &str| -> Box<str> {
        if lower {
            s.to_lowercase().into()
        } else {
            s.into()
        }
    };
    let mut out = StrMatch::default();
    for (m, node) in matchers(
        key,
        value,
        &["is", "starts_with", "ends_with", "contains", "in"],
        STR_MATCHERS,
        errs,
    )? {
        let vals = strings(key, m, node, errs)?;
        match m {
            "in" => out.one_of = Some(vals.iter().map(|s| conv(s)).collect()),
            "is" => out.is = Some(conv(vals[0])),
            "starts_with" => out.starts_with = Some(conv(vals[0])),
            "ends_with" => out.ends_with = Some(conv(vals[0])),
            _ => out.contains = Some(conv(vals[0])),
        }
    }
    Some(out)
}
