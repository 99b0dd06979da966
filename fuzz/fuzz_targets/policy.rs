//! Any text as a route's `policy:` block, compiled and then evaluated for an anonymous request
//! and a signed-in user, with properties checked against an expectation derived here, not
//! from the evaluator's own flags:
//! - an anonymous request passes only through an allow that names no user (no identity
//!   criterion anywhere in it);
//! - a signed-in user is never asked to sign in, and every allow names its rule, which has an
//!   allow clause;
//! - evaluating twice gives the same decision.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::policy::{evaluate, Criterion, Expr, Facts, Identity, Outcome, Policy};

/// Does `e` mention who the user is? (By the kinds of criteria: only the method, the path and
/// the client address can be known of an anonymous request.)
fn names_user(e: &Expr) -> bool {
    match e {
        Expr::Always => false,
        Expr::And(v) | Expr::Or(v) | Expr::Not(v) | Expr::Nor(v) => v.iter().any(names_user),
        Expr::Crit(c) => !matches!(
            c,
            Criterion::HttpMethod(_) | Criterion::HttpPath(_) | Criterion::SourceIp(_)
        ),
    }
}

fn check(policy: &Policy, id: Option<&Identity>, facts: &Facts<'_>) {
    let d = evaluate(policy, id, facts);
    let again = evaluate(policy, id, facts);
    assert_eq!((d.outcome, d.rule), (again.outcome, again.rule));
    if d.outcome == Outcome::Allow {
        let origin = d.rule.expect("an allow names its rule");
        let rule = policy
            .rules
            .iter()
            .find(|r| &r.origin == origin)
            .expect("the named rule is the policy's");
        let allow = rule
            .allow
            .as_ref()
            .expect("the rule that allows has an allow");
        if id.is_none() {
            assert!(
                !names_user(allow),
                "an allow naming a user let an anonymous request in"
            );
        }
    }
    if id.is_some() {
        assert_ne!(
            d.outcome,
            Outcome::Unauthenticated,
            "a signed-in user asked to sign in"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let mut yaml = String::from("insecure_server: true\nroutes:\n  - from: https://a.test\n    to: http://b:1\n    policy:\n");
    for line in body.lines() {
        yaml.push_str("      ");
        yaml.push_str(line);
        yaml.push('\n');
    }
    let Ok(mut c) = portcullis::config::load_str(
        &yaml,
        "fuzz.yaml",
        std::path::Path::new("/nonexistent"),
        &portcullis::config::MapEnv::default(),
    ) else {
        return;
    };
    let policy = c.routes.remove(0).policy;
    let id = Identity {
        sub: "u".into(),
        email: Some("a@example.com".into()),
        groups: vec!["g".into()],
        claims: [(
            "role".to_string(),
            portcullis::policy::ClaimValue::List(vec!["admin".into()]),
        )]
        .into(),
        ..Default::default()
    };
    for path in ["/", "/admin/x"] {
        for ip in [Some("10.1.2.3".parse().unwrap()), None] {
            let facts = Facts {
                method: &http::Method::GET,
                path,
                ip,
            };
            check(&policy, None, &facts);
            check(&policy, Some(&id), &facts);
        }
    }
});
