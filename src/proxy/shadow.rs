//! The shadow policy: decided beside the route's policy on every request (WebSocket upgrades
//! and tunnels included) and never enforced; a disagreement is counted, and logged once per
//! user and route per minute.

use super::state::Shared;
use crate::clock::now;
use crate::policy::{self, Facts, Identity};
use crate::route::Route;

/// Counts (and logs, once per user and route per minute) a request the route's shadow policy
/// decides otherwise than its policy. Never changes what the request gets.
pub fn compare(
    shared: &Shared,
    route: &Route,
    enforced: &Result<policy::eval::Permitted, policy::Refusal>,
    shadow: &policy::Decision<'_>,
    facts: &Facts<'_>,
    user: Option<&Identity>,
) {
    let (word, rule) = match enforced {
        Ok(p) => ("allow", p.rule.as_ref()),
        Err(policy::Refusal::Unauthenticated) => ("unauthenticated", None),
        Err(policy::Refusal::Denied { rule, .. } | policy::Refusal::Unassigned { rule, .. }) => {
            ("deny", rule.as_ref())
        }
    };
    let shadow_word = match shadow.outcome {
        policy::Outcome::Allow => "allow",
        policy::Outcome::Deny => "deny",
        policy::Outcome::Unauthenticated => "unauthenticated",
    };
    if word == shadow_word {
        return;
    }
    shared
        .metrics
        .shadow_disagreement(&route.name, word, shadow_word);
    let who = user.map_or("-", |i| i.email.as_deref().unwrap_or(&i.sub));
    if shared.shadow_log.due(route.index, who, now()) {
        let at = |r: Option<&policy::RuleOrigin>| {
            r.map_or("no rule".to_string(), |r| {
                format!("{} at line {}:{}", r.key, r.pos.line, r.pos.col)
            })
        };
        tracing::info!(
            route = %route.name,
            user = who,
            path = facts.path,
            enforced = word,
            enforced_rule = at(rule),
            shadow = shadow_word,
            shadow_rule = at(shadow.rule),
            "shadow policy disagrees"
        );
    }
}
