//! The one pure evaluator: no I/O, no allocation, same answer for the proxy and `explain`.

use std::net::IpAddr;
use std::sync::Arc;

use super::{
    Choice, ClaimMatch, ClaimValue, Criterion, Expr, Identity, Policy, RuleOrigin, StrMatch,
};

/// What the request is, besides who sends it.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    pub method: &'a http::Method,
    /// The normalized path: exactly what the upstream will receive.
    pub path: &'a str,
    /// The TCP peer's address (never a header's); `None` in `explain` without `--ip`.
    pub ip: Option<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    /// Nobody is signed in and signing in could change the answer.
    Unauthenticated,
}

/// The outcome, the rule that decided it (if one did), and why; for an allow, which `to`
/// entry serves it and which grant applies.
#[derive(Clone, Copy, Debug)]
pub struct Decision<'p> {
    pub outcome: Outcome,
    pub rule: Option<&'p RuleOrigin>,
    pub reason: &'static str,
    /// The `to` entry (0 for a plain `to`); meaningful on an allow.
    pub target: usize,
    /// The grant whose headers are set, if one applies (only on an allow).
    pub grant: Option<usize>,
}

/// Why an allowed user is refused when no `to` entry is theirs (a 403 that says so).
pub const NO_UPSTREAM: &str =
    "no upstream is assigned to this user (no `to` entry's `when` matches)";

/// The first entry whose condition holds; one that needs an identity never holds without one.
fn first(choices: &[Choice], id: Option<&Identity>, facts: &Facts<'_>) -> Option<usize> {
    choices.iter().position(|c| match &c.when {
        None => true,
        Some(_) if c.needs_identity && id.is_none() => false,
        Some(e) => eval_expr(e, id, facts),
    })
}

/// Decides one request: whether it passes, then (when it does) its upstream and its grant.
pub fn evaluate<'p>(policy: &'p Policy, id: Option<&Identity>, facts: &Facts<'_>) -> Decision<'p> {
    let d = decide_access(policy, id, facts);
    if d.outcome != Outcome::Allow {
        return d;
    }
    let target = if policy.targets.is_empty() {
        Some(0)
    } else {
        first(&policy.targets, id, facts)
    };
    let Some(target) = target else {
        let by_identity = policy.targets.iter().any(|c| c.needs_identity);
        return Decision {
            outcome: if id.is_none() && by_identity {
                Outcome::Unauthenticated
            } else {
                Outcome::Deny
            },
            reason: NO_UPSTREAM,
            ..d
        };
    };
    Decision {
        target,
        grant: first(&policy.grants, id, facts),
        ..d
    }
}

/// Whether the request passes: deny rules first, then any allow.
fn decide_access<'p>(policy: &'p Policy, id: Option<&Identity>, facts: &Facts<'_>) -> Decision<'p> {
    let mut allowed_by = None;
    for rule in &policy.rules {
        if let Some(deny) = &rule.deny {
            if eval_expr(deny, id, facts) {
                if id.is_none() && policy.wants_identity {
                    return Decision {
                        outcome: Outcome::Unauthenticated,
                        rule: Some(&rule.origin),
                        reason:
                            "a deny rule matched an anonymous request; signing in may change that",
                        target: 0,
                        grant: None,
                    };
                }
                return Decision {
                    outcome: Outcome::Deny,
                    rule: Some(&rule.origin),
                    reason: "a deny rule matched",
                    target: 0,
                    grant: None,
                };
            }
        }
        if allowed_by.is_none() {
            if let Some(allow) = &rule.allow {
                let applicable = id.is_some() || !rule.allow_needs_identity;
                if applicable && eval_expr(allow, id, facts) {
                    allowed_by = Some(&rule.origin);
                }
            }
        }
    }
    match allowed_by {
        Some(rule) => Decision {
            outcome: Outcome::Allow,
            rule: Some(rule),
            reason: "an allow rule matched and no deny rule did",
            target: 0,
            grant: None,
        },
        None if id.is_none() && policy.wants_identity => Decision {
            outcome: Outcome::Unauthenticated,
            rule: None,
            reason: "sign-in required",
            target: 0,
            grant: None,
        },
        None => Decision {
            outcome: Outcome::Deny,
            rule: None,
            reason: if policy.rules.is_empty() {
                "the route has no policy, so nobody may pass"
            } else {
                "no allow rule matched"
            },
            target: 0,
            grant: None,
        },
    }
}

/// Proof that the policy let this request through. Only [`authorize`] makes one, and the
/// forwarding code takes nothing else: a request without a decision cannot be proxied.
// A private field, not `#[non_exhaustive]`: that attribute would still let any module of
// this crate build one, and the point is that only this module can.
#[allow(clippy::manual_non_exhaustive)]
#[derive(Debug)]
pub struct Permitted {
    pub identity: Option<Arc<Identity>>,
    pub rule: Option<RuleOrigin>,
    /// The route's `to` entry that serves the request (0 for a plain `to`).
    pub target: usize,
    /// The route's grant whose headers are set, if one applies.
    pub grant: Option<usize>,
    _sealed: (),
}

/// Why a request was not let through.
#[derive(Debug)]
pub enum Refusal {
    Unauthenticated,
    /// Let in by the policy, but no `to` entry picks this user.
    Unassigned {
        identity: Option<Arc<Identity>>,
        rule: Option<RuleOrigin>,
    },
    Denied {
        identity: Option<Arc<Identity>>,
        rule: Option<RuleOrigin>,
        reason: &'static str,
    },
}

/// Evaluates and, on allow, issues the [`Permitted`] token.
pub fn authorize(
    policy: &Policy,
    identity: Option<Arc<Identity>>,
    facts: &Facts<'_>,
) -> Result<Permitted, Refusal> {
    let d = evaluate(policy, identity.as_deref(), facts);
    let rule = d.rule.cloned();
    match d.outcome {
        Outcome::Allow => Ok(Permitted {
            identity,
            rule,
            target: d.target,
            grant: d.grant,
            _sealed: (),
        }),
        Outcome::Unauthenticated => Err(Refusal::Unauthenticated),
        Outcome::Deny if d.reason == NO_UPSTREAM => Err(Refusal::Unassigned { identity, rule }),
        Outcome::Deny => Err(Refusal::Denied {
            identity,
            rule,
            reason: d.reason,
        }),
    }
}

fn eval_expr(e: &Expr, id: Option<&Identity>, f: &Facts<'_>) -> bool {
    match e {
        Expr::Always => true,
        Expr::And(v) => v.iter().all(|x| eval_expr(x, id, f)),
        Expr::Or(v) => v.iter().any(|x| eval_expr(x, id, f)),
        Expr::Not(v) => !v.iter().all(|x| eval_expr(x, id, f)),
        Expr::Nor(v) => !v.iter().any(|x| eval_expr(x, id, f)),
        Expr::Crit(c) => eval_criterion(c, id, f),
    }
}

fn eval_criterion(c: &Criterion, id: Option<&Identity>, f: &Facts<'_>) -> bool {
    match c {
        Criterion::HttpMethod(methods) => methods.iter().any(|m| m == f.method),
        Criterion::HttpPath(m) => m.matches(f.path),
        Criterion::SourceIp(nets) => {
            f.ip.is_some_and(|ip| nets.iter().any(|n| n.contains(&canonical_ip(ip))))
        }
        _ => {
            let Some(id) = id else { return false };
            match c {
                Criterion::AuthenticatedUser => true,
                Criterion::Email(m) => id.usable_email().is_some_and(|e| m.matches(e)),
                Criterion::Domain(m) => id.email_domain().is_some_and(|d| m.matches(d)),
                Criterion::User(m) => m.matches(&id.sub),
                Criterion::Groups(l) => id.groups.iter().any(|g| **g == *l.has),
                Criterion::Claim(name, m) => match (id.claims.get(&**name), m) {
                    (None, _) => false,
                    (Some(ClaimValue::Str(s)), ClaimMatch::Has(v)) => **s == **v,
                    (Some(ClaimValue::Str(s)), ClaimMatch::Str(m)) => m.matches(s),
                    (Some(ClaimValue::List(l)), ClaimMatch::Has(v)) => l.iter().any(|s| **s == **v),
                    (Some(ClaimValue::List(l)), ClaimMatch::Str(m)) => {
                        l.iter().any(|s| m.matches(s))
                    }
                },
                _ => false,
            }
        }
    }
}

/// An IPv4 client seen on a dual-stack socket (`::ffff:a.b.c.d`) is matched as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl StrMatch {
    /// True when every matcher that is set holds.
    pub fn matches(&self, s: &str) -> bool {
        self.is.as_deref().is_none_or(|v| s == v)
            && self.starts_with.as_deref().is_none_or(|v| s.starts_with(v))
            && self.ends_with.as_deref().is_none_or(|v| s.ends_with(v))
            && self.contains.as_deref().is_none_or(|v| s.contains(v))
            && self
                .one_of
                .as_ref()
                .is_none_or(|vs| vs.iter().any(|v| s == &**v))
    }
}

#[cfg(test)]
mod tests {
    use super::{authorize, Facts, Refusal};
    use crate::policy::Identity;
    use std::sync::Arc;

    /// A user the policy lets in but no `to` entry names is refused as unassigned (its own
    /// page); one the policy refuses is denied, whatever the `to` entries say.
    #[test]
    fn policy_refusals_tell_unassigned_from_denied() {
        let policy = crate::config::first_policy(
            "insecure_server: true\nroutes:\n  - from: http://a\n    to:\n      - when: { groups: { has: team-a } }\n        to: http://b\n    allowed_domains: [b.test]\n",
        );
        let facts = Facts {
            method: &http::Method::GET,
            path: "/",
            ip: None,
        };
        let who = |email: &str, groups: &[&str]| {
            Some(Arc::new(Identity {
                sub: "u1".into(),
                email: Some(email.into()),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                ..Default::default()
            }))
        };
        assert!(authorize(&policy, who("a@b.test", &["team-a"]), &facts).is_ok());
        assert!(matches!(
            authorize(&policy, who("a@b.test", &["team-b"]), &facts),
            Err(Refusal::Unassigned { .. })
        ));
        assert!(matches!(
            authorize(&policy, who("a@c.test", &["team-a"]), &facts),
            Err(Refusal::Denied { .. })
        ));
        assert!(matches!(
            authorize(&policy, None, &facts),
            Err(Refusal::Unauthenticated)
        ));
    }
}
