//! The policy evaluator: a table of cases through the real config compiler, and properties.

use portcullis::config::{self, MapEnv};
use portcullis::policy::{
    evaluate, ClaimMatch, ClaimValue, Criterion, Expr, Facts, Identity, ListMatch, Outcome, Policy,
    Rule, RuleOrigin, StrMatch,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

fn compile(keys: &str) -> Policy {
    let yaml = format!(
        "insecure_server: true\nroutes:\n  - from: https://app.test\n    to: http://up:1\n{keys}"
    );
    let mut c = config::load_str(&yaml, "t.yaml", Path::new("."), &MapEnv::default())
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    c.routes.remove(0).policy
}

#[derive(Clone, Default)]
struct Who {
    email: Option<&'static str>,
    verified: Option<bool>,
    sub: &'static str,
    groups: &'static [&'static str],
    claims: &'static [(&'static str, &'static str)],
}

fn identity(w: &Who) -> Identity {
    let mut claims = BTreeMap::new();
    for (k, v) in w.claims {
        let v = if v.contains(',') {
            ClaimValue::List(v.split(',').map(String::from).collect())
        } else {
            ClaimValue::Str(v.to_string())
        };
        claims.insert(k.to_string(), v);
    }
    Identity {
        iss: "https://idp.test".into(),
        sub: w.sub.to_string(),
        email: w
            .email
            .and_then(portcullis::policy::identity::normalize_email),
        email_verified: w.verified,
        groups: w.groups.iter().map(|g| g.to_string()).collect(),
        claims,
        ..Default::default()
    }
}

const ALICE: Who = Who {
    email: Some("alice@example.com"),
    verified: Some(true),
    sub: "u-alice",
    groups: &["staff"],
    claims: &[("department", "eng"), ("roles", "reader,writer")],
};
/// In another department, with roles that are not `admin`: `has` must look for the value,
/// not for any element.
const READER: Who = Who {
    email: Some("rita@example.com"),
    verified: Some(true),
    sub: "u-rita",
    groups: &[],
    claims: &[("department", "ops"), ("roles", "reader,writer")],
};
const ROLE_ADMIN: Who = Who {
    email: Some("olga@example.com"),
    verified: Some(true),
    sub: "u-olga",
    groups: &[],
    claims: &[("department", "ops"), ("roles", "reader,admin")],
};
const ADMIN: Who = Who {
    email: Some("root@example.com"),
    verified: None,
    sub: "u-root",
    groups: &["staff", "admins"],
    claims: &[],
};
const EVE: Who = Who {
    email: Some("eve@evil.test"),
    verified: Some(true),
    sub: "u-eve",
    groups: &[],
    claims: &[],
};
const UPPER: Who = Who {
    email: Some("ALICE@EXAMPLE.COM"),
    verified: Some(true),
    sub: "u-alice",
    groups: &[],
    claims: &[],
};
const UNVERIFIED: Who = Who {
    email: Some("alice@example.com"),
    verified: Some(false),
    sub: "u-alice",
    groups: &["staff"],
    claims: &[],
};
const TWO_AT: Who = Who {
    email: Some("eve@evil.test@example.com"),
    verified: Some(true),
    sub: "u-eve2",
    groups: &[],
    claims: &[],
};
const TRAILING_DOT: Who = Who {
    email: Some("eve@example.com."),
    verified: Some(true),
    sub: "u-eve3",
    groups: &[],
    claims: &[],
};
const NOEMAIL: Who = Who {
    email: None,
    verified: None,
    sub: "svc-1",
    groups: &["robots"],
    claims: &[],
};

struct Case {
    keys: &'static str,
    who: Option<Who>,
    method: &'static str,
    path: &'static str,
    ip: Option<&'static str>,
    want: Outcome,
}

const fn c(
    keys: &'static str,
    who: Option<Who>,
    method: &'static str,
    path: &'static str,
    ip: Option<&'static str>,
    want: Outcome,
) -> Case {
    Case {
        keys,
        who,
        method,
        path,
        ip,
        want,
    }
}

use Outcome::{Allow as A, Deny as D, Unauthenticated as U};

const EMAIL_IS: &str =
    "    policy:\n      - allow:\n          or:\n            - email: { is: Alice@Example.com }\n";
const DOMAIN: &str =
    "    policy:\n      - allow:\n          or:\n            - domain: { is: example.com }\n";
const DOMAIN_ENDS: &str = "    policy:\n      - allow:\n          or:\n            - domain: { ends_with: .example.com }\n";
const GROUPS: &str =
    "    policy:\n      - allow:\n          or:\n            - groups: { has: admins }\n";
const DENY_WINS: &str = "    policy:\n      - allow:\n          or:\n            - domain: { is: example.com }\n        deny:\n          or:\n            - email: { is: alice@example.com }\n";
const DESIGN: &str = "    policy:\n      - allow:\n          or:\n            - email: { is: alice@example.com }\n            - domain: { is: example.com }\n            - groups: { has: openclaw-admins }\n        deny:\n          and:\n            - http_path: { starts_with: /admin }\n            - not: [ { groups: { has: admins } } ]\n";
const AND: &str = "    policy:\n      - allow:\n          and:\n            - domain: { is: example.com }\n            - groups: { has: staff }\n            - http_method: { in: [GET, HEAD] }\n";
const NOT: &str = "    policy:\n      - allow:\n          and:\n            - authenticated_user: true\n            - not:\n                - groups: { has: robots }\n";
const NOR: &str = "    policy:\n      - allow:\n          and:\n            - authenticated_user: true\n            - nor:\n                - domain: { is: evil.test }\n                - groups: { has: robots }\n";
const METHODS: &str =
    "    policy:\n      - allow:\n          or:\n            - http_method: { in: [get, head] }\n";
const PATHS: &str = "    policy:\n      - allow:\n          or:\n            - http_path: { starts_with: /public/ }\n            - http_path: { is: /health }\n";
const CIDR: &str = "    policy:\n      - allow:\n          or:\n            - source_ip: { in: [10.0.0.0/8, '2001:db8::/32'] }\n            - source_ip: { is: 192.0.2.7 }\n";
const CLAIMS: &str = "    policy:\n      - allow:\n          or:\n            - claim/department: eng\n            - claim/roles: { has: admin }\n";
const CLAIM_STR: &str = "    policy:\n      - allow:\n          or:\n            - claim/department: { starts_with: fin }\n";
const USER: &str =
    "    policy:\n      - allow:\n          or:\n            - user: { in: [svc-1, u-root] }\n";
const EMAIL_MATCHERS: &str = "    policy:\n      - allow:\n          and:\n            - email: { starts_with: ali, ends_with: '@example.com', contains: ce@ }\n";
const TWO_RULES: &str = "    policy:\n      - allow:\n          or:\n            - groups: { has: staff }\n      - deny:\n          or:\n            - http_method: { is: DELETE }\n";
const NESTED: &str = "    policy:\n      - allow:\n          or:\n            - and:\n                - domain: { is: example.com }\n                - or:\n                    - groups: { has: admins }\n                    - http_path: { starts_with: /docs }\n            - email: { is: eve@evil.test }\n";
const ANON_PATH: &str = "    policy:\n      - allow:\n          or:\n            - http_path: { starts_with: /public/ }\n      - allow:\n          or:\n            - domain: { is: example.com }\n";
const NOT_ANON: &str =
    "    policy:\n      - allow:\n          not:\n            - email: { is: eve@evil.test }\n";
const DENY_IP: &str = "    allow_any_authenticated_user: true\n    policy:\n      - deny:\n          or:\n            - source_ip: { is: 203.0.113.0/24 }\n";
const USERS: &str = "    allowed_users: [Alice@Example.com, svc-1]\n";
const DOMAINS: &str = "    allowed_domains: [Example.com]\n";
const GROUPS_SH: &str = "    allowed_groups: [admins, robots]\n";
const ANY: &str = "    allow_any_authenticated_user: true\n";
const PUBLIC: &str = "    allow_public_unauthenticated_access: true\n";
const NOTHING: &str = "";

fn cases() -> Vec<Case> {
    vec![
        c(EMAIL_IS, Some(ALICE), "GET", "/", None, A),
        c(EMAIL_IS, Some(UPPER), "GET", "/", None, A),
        c(EMAIL_IS, Some(UNVERIFIED), "GET", "/", None, D),
        c(EMAIL_IS, Some(EVE), "GET", "/", None, D),
        c(EMAIL_IS, None, "GET", "/", None, U),
        c(DOMAIN, Some(ALICE), "GET", "/", None, A),
        c(DOMAIN, Some(ADMIN), "GET", "/", None, A),
        c(DOMAIN, Some(EVE), "GET", "/", None, D),
        c(DOMAIN, Some(TWO_AT), "GET", "/", None, D),
        c(DOMAIN, Some(TRAILING_DOT), "GET", "/", None, D),
        c(DOMAIN, Some(UNVERIFIED), "GET", "/", None, D),
        c(DOMAIN, Some(NOEMAIL), "GET", "/", None, D),
        c(DOMAIN_ENDS, Some(ALICE), "GET", "/", None, D),
        c(GROUPS, Some(ADMIN), "GET", "/", None, A),
        c(GROUPS, Some(ALICE), "GET", "/", None, D),
        c(GROUPS, None, "GET", "/", None, U),
        c(DENY_WINS, Some(ALICE), "GET", "/", None, D),
        c(DENY_WINS, Some(ADMIN), "GET", "/", None, A),
        c(DESIGN, Some(ALICE), "GET", "/chat", None, A),
        c(DESIGN, Some(ALICE), "GET", "/admin/users", None, D),
        c(DESIGN, Some(ADMIN), "GET", "/admin/users", None, A),
        c(DESIGN, Some(EVE), "GET", "/chat", None, D),
        c(DESIGN, None, "GET", "/admin", None, U),
        c(AND, Some(ALICE), "GET", "/", None, A),
        c(AND, Some(ALICE), "HEAD", "/", None, A),
        c(AND, Some(ALICE), "POST", "/", None, D),
        c(AND, Some(EVE), "GET", "/", None, D),
        c(AND, Some(UNVERIFIED), "GET", "/", None, D),
        c(NOT, Some(ALICE), "GET", "/", None, A),
        c(NOT, Some(NOEMAIL), "GET", "/", None, D),
        c(NOT, None, "GET", "/", None, U),
        c(NOR, Some(ALICE), "GET", "/", None, A),
        c(NOR, Some(EVE), "GET", "/", None, D),
        c(NOR, Some(NOEMAIL), "GET", "/", None, D),
        c(METHODS, None, "GET", "/", None, A),
        c(METHODS, None, "HEAD", "/", None, A),
        c(METHODS, None, "POST", "/", None, D),
        c(PATHS, None, "GET", "/public/x", None, A),
        c(PATHS, None, "GET", "/public", None, D),
        c(PATHS, None, "GET", "/health", None, A),
        c(PATHS, None, "GET", "/healthz", None, D),
        c(CIDR, None, "GET", "/", Some("10.1.2.3"), A),
        c(CIDR, None, "GET", "/", Some("11.1.2.3"), D),
        c(CIDR, None, "GET", "/", Some("::ffff:10.9.9.9"), A),
        c(CIDR, None, "GET", "/", Some("2001:db8::1"), A),
        c(CIDR, None, "GET", "/", Some("2001:db9::1"), D),
        c(CIDR, None, "GET", "/", Some("192.0.2.7"), A),
        c(CIDR, None, "GET", "/", Some("192.0.2.8"), D),
        c(CIDR, None, "GET", "/", None, D),
        c(CLAIMS, Some(ALICE), "GET", "/", None, A),
        c(CLAIMS, Some(ADMIN), "GET", "/", None, D),
        c(CLAIMS, Some(READER), "GET", "/", None, D),
        c(CLAIMS, Some(ROLE_ADMIN), "GET", "/", None, A),
        c(CLAIM_STR, Some(ALICE), "GET", "/", None, D),
        c(USER, Some(NOEMAIL), "GET", "/", None, A),
        c(USER, Some(ADMIN), "GET", "/", None, A),
        c(USER, Some(ALICE), "GET", "/", None, D),
        c(EMAIL_MATCHERS, Some(ALICE), "GET", "/", None, A),
        c(EMAIL_MATCHERS, Some(ADMIN), "GET", "/", None, D),
        c(TWO_RULES, Some(ALICE), "GET", "/", None, A),
        c(TWO_RULES, Some(ALICE), "DELETE", "/", None, D),
        c(NESTED, Some(ADMIN), "GET", "/x", None, A),
        c(NESTED, Some(ALICE), "GET", "/docs/a", None, A),
        c(NESTED, Some(ALICE), "GET", "/x", None, D),
        c(NESTED, Some(EVE), "GET", "/x", None, A),
        c(ANON_PATH, None, "GET", "/public/a", None, A),
        c(ANON_PATH, None, "GET", "/private", None, U),
        c(ANON_PATH, Some(EVE), "GET", "/private", None, D),
        // `not email` must not let an anonymous request in.
        c(NOT_ANON, None, "GET", "/", None, U),
        c(NOT_ANON, Some(ALICE), "GET", "/", None, A),
        c(NOT_ANON, Some(EVE), "GET", "/", None, D),
        c(DENY_IP, Some(ALICE), "GET", "/", Some("203.0.113.5"), D),
        c(DENY_IP, Some(ALICE), "GET", "/", Some("198.51.100.5"), A),
        c(DENY_IP, None, "GET", "/", Some("198.51.100.5"), U),
        c(USERS, Some(ALICE), "GET", "/", None, A),
        c(USERS, Some(NOEMAIL), "GET", "/", None, A),
        c(USERS, Some(UNVERIFIED), "GET", "/", None, D),
        c(USERS, Some(EVE), "GET", "/", None, D),
        c(DOMAINS, Some(UPPER), "GET", "/", None, A),
        c(DOMAINS, Some(TWO_AT), "GET", "/", None, D),
        c(GROUPS_SH, Some(NOEMAIL), "GET", "/", None, A),
        c(GROUPS_SH, Some(ALICE), "GET", "/", None, D),
        c(ANY, Some(EVE), "GET", "/", None, A),
        c(ANY, None, "GET", "/", None, U),
        c(PUBLIC, None, "POST", "/anything", None, A),
        c(NOTHING, Some(ADMIN), "GET", "/", None, D),
        c(NOTHING, None, "GET", "/", None, D),
    ]
}

#[test]
fn policy_table() {
    let cases = cases();
    assert!(cases.len() >= 60);
    for (i, case) in cases.iter().enumerate() {
        let policy = compile(case.keys);
        let id = case.who.as_ref().map(identity);
        let method = http::Method::from_bytes(case.method.as_bytes()).unwrap();
        let facts = Facts {
            method: &method,
            path: case.path,
            ip: case.ip.map(|s| s.parse().unwrap()),
        };
        let d = evaluate(&policy, id.as_ref(), &facts);
        assert_eq!(
            d.outcome,
            case.want,
            "case {i}: {} {} as {:?} from {:?}\n{}reason: {}",
            case.method,
            case.path,
            case.who.as_ref().and_then(|w| w.email),
            case.ip,
            case.keys,
            d.reason
        );
        if d.outcome == Outcome::Allow {
            assert!(d.rule.is_some(), "case {i}: an allow always names its rule");
        }
    }
}

// ---- properties -------------------------------------------------------------------------

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        Just(Expr::Crit(Criterion::AuthenticatedUser)),
        Just(Expr::Crit(Criterion::Email(StrMatch::is(
            "alice@example.com"
        )))),
        Just(Expr::Crit(Criterion::Domain(StrMatch::is("example.com")))),
        Just(Expr::Crit(Criterion::Groups(ListMatch {
            has: "staff".into()
        }))),
        Just(Expr::Crit(Criterion::Groups(ListMatch {
            has: "admins".into()
        }))),
        Just(Expr::Crit(Criterion::HttpMethod(vec![http::Method::GET]))),
        Just(Expr::Crit(Criterion::HttpPath(StrMatch {
            starts_with: Some("/admin".into()),
            ..StrMatch::default()
        }))),
        Just(Expr::Crit(Criterion::SourceIp(vec!["10.0.0.0/8"
            .parse()
            .unwrap()]))),
        Just(Expr::Crit(Criterion::User(StrMatch::is("u-alice")))),
        Just(Expr::Crit(Criterion::Claim(
            "department".into(),
            ClaimMatch::Str(StrMatch::is("eng"))
        ))),
        Just(Expr::Crit(Criterion::Claim(
            "roles".into(),
            ClaimMatch::Has("writer".into())
        ))),
    ]
}

/// Does `e` say anything about who the user is? Derived here from the kinds of criteria (only
/// the method, the path and the client's address are known of an anonymous request), not from
/// the evaluator's own `needs_identity`.
fn names_user(e: &Expr) -> bool {
    match e {
        Expr::Always => false,
        Expr::And(v) | Expr::Or(v) | Expr::Not(v) | Expr::Nor(v) => v.iter().any(names_user),
        Expr::Crit(
            Criterion::AuthenticatedUser
            | Criterion::Email(_)
            | Criterion::Domain(_)
            | Criterion::User(_)
            | Criterion::Groups(_)
            | Criterion::Claim(..),
        ) => true,
        Expr::Crit(Criterion::HttpMethod(_) | Criterion::HttpPath(_) | Criterion::SourceIp(_)) => {
            false
        }
    }
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(Expr::And),
            prop::collection::vec(inner.clone(), 1..4).prop_map(Expr::Or),
            prop::collection::vec(inner.clone(), 1..4).prop_map(Expr::Not),
            prop::collection::vec(inner, 1..4).prop_map(Expr::Nor),
        ]
    })
}

fn who() -> impl Strategy<Value = Option<Identity>> {
    prop_oneof![
        Just(None),
        Just(Some(identity(&ALICE))),
        Just(Some(identity(&ADMIN))),
        Just(Some(identity(&EVE))),
        Just(Some(identity(&UNVERIFIED))),
    ]
}

fn facts_strategy() -> impl Strategy<Value = (http::Method, &'static str, Option<std::net::IpAddr>)>
{
    (
        prop_oneof![Just(http::Method::GET), Just(http::Method::POST)],
        prop_oneof![Just("/"), Just("/admin/x")],
        prop_oneof![
            Just(None),
            Just(Some("10.1.1.1".parse().unwrap())),
            Just(Some("192.0.2.1".parse().unwrap()))
        ],
    )
}

fn origin() -> RuleOrigin {
    RuleOrigin {
        key: "policy",
        pos: Default::default(),
    }
}

fn allow_only(e: Expr) -> Policy {
    Policy::new(vec![Rule::new(Some(e), None, origin())])
}

fn decide(
    e: Expr,
    id: &Option<Identity>,
    f: &(http::Method, &'static str, Option<std::net::IpAddr>),
) -> Outcome {
    let p = allow_only(e);
    evaluate(
        &p,
        id.as_ref(),
        &Facts {
            method: &f.0,
            path: f.1,
            ip: f.2,
        },
    )
    .outcome
}

proptest! {
    #[test]
    fn not_of_not_is_the_expression(e in expr(), id in who(), f in facts_strategy()) {
        let double = Expr::Not(vec![Expr::Not(vec![e.clone()])]);
        prop_assert_eq!(decide(double, &id, &f), decide(e, &id, &f));
    }

    #[test]
    fn nor_is_not_or(v in prop::collection::vec(expr(), 1..4), id in who(), f in facts_strategy()) {
        let nor = Expr::Nor(v.clone());
        let not_or = Expr::Not(vec![Expr::Or(v)]);
        prop_assert_eq!(decide(nor, &id, &f), decide(not_or, &id, &f));
    }

    #[test]
    fn not_is_not_and(v in prop::collection::vec(expr(), 1..4), id in who(), f in facts_strategy()) {
        let not = Expr::Not(v.clone());
        let not_and = Expr::Not(vec![Expr::And(v)]);
        prop_assert_eq!(decide(not, &id, &f), decide(not_and, &id, &f));
    }

    #[test]
    fn de_morgan(a in expr(), b in expr(), id in who(), f in facts_strategy()) {
        let lhs = Expr::Not(vec![Expr::Or(vec![a.clone(), b.clone()])]);
        let rhs = Expr::And(vec![Expr::Not(vec![a]), Expr::Not(vec![b])]);
        prop_assert_eq!(decide(lhs, &id, &f), decide(rhs, &id, &f));
    }

    #[test]
    fn a_matching_deny_always_beats_any_allow(allow in expr(), deny in expr(), id in who(), f in facts_strategy()) {
        let p = Policy::new(vec![Rule::new(Some(allow), Some(deny.clone()), origin())]);
        let out = evaluate(&p, id.as_ref(), &Facts { method: &f.0, path: f.1, ip: f.2 }).outcome;
        let deny_alone = decide(deny, &id, &f) == Outcome::Allow;
        if deny_alone {
            prop_assert_ne!(out, Outcome::Allow);
        }
    }

    #[test]
    fn an_anonymous_request_never_passes_an_allow_that_names_a_user(e in expr(), f in facts_strategy()) {
        if names_user(&e) {
            prop_assert_ne!(decide(e, &None, &f), Outcome::Allow);
        }
    }

    #[test]
    fn signing_in_is_asked_for_only_when_it_could_change_the_answer(e in expr(), f in facts_strategy()) {
        let anon = decide(e.clone(), &None, &f);
        if anon == Outcome::Unauthenticated {
            prop_assert!(names_user(&e));
        }
        if !names_user(&e) {
            // Nothing about the user: the answer is the same for everyone.
            for id in [identity(&ALICE), identity(&EVE)] {
                prop_assert_eq!(decide(e.clone(), &Some(id), &f), anon);
            }
        }
    }

    #[test]
    fn a_signed_in_user_is_never_asked_to_sign_in(e in expr(), id in who(), f in facts_strategy()) {
        if id.is_some() {
            prop_assert_ne!(decide(e, &id, &f), Outcome::Unauthenticated);
        }
    }

}

/// `to` entries and grants are decided by the same evaluator, after access: the first entry
/// whose `when` holds; one that names who the user is never holds for an anonymous request
/// (which is then asked to sign in if no entry is left for it).
#[test]
fn upstream_and_grant_choices_table() {
    let yaml = "insecure_server: true\nroutes:\n  - from: https://app.test\n    to:\n\
        \x20     - when: { http_path: { starts_with: /docs/ } }\n        to: http://docs:1\n\
        \x20     - when: { groups: { has: staff } }\n        to: http://staff:1\n\
        \x20     - when: { not: [ { domain: { is: evil.test } } ] }\n        to: http://others:1\n\
        \x20   allow_public_unauthenticated_access: true\n    grants:\n\
        \x20     - when: { groups: { has: admins } }\n        set_request_headers: { X-Role: admin }\n\
        \x20     - set_request_headers: { X-Role: reader }\n";
    let c = config::load_str(yaml, "t.yaml", Path::new("."), &MapEnv::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let route = &c.routes[0];
    let p = &route.policy;
    assert!(p.uses_identity, "the choices read the session");
    let get = http::Method::GET;
    let at = |path| Facts {
        method: &get,
        path,
        ip: None,
    };
    // (who, path, outcome, upstream, grant)
    type Chosen = (Option<&'static str>, Option<usize>);
    let cases: &[(Option<Who>, &str, Outcome, Chosen)] = &[
        (
            None,
            "/docs/a",
            Outcome::Allow,
            (Some("http://docs:1"), Some(1)),
        ),
        (None, "/", Outcome::Unauthenticated, (None, None)),
        (
            Some(ALICE),
            "/",
            Outcome::Allow,
            (Some("http://staff:1"), Some(1)),
        ),
        (
            Some(ADMIN),
            "/",
            Outcome::Allow,
            (Some("http://staff:1"), Some(0)),
        ),
        (
            Some(ADMIN),
            "/docs/a",
            Outcome::Allow,
            (Some("http://docs:1"), Some(0)),
        ),
        (
            Some(NOEMAIL),
            "/",
            Outcome::Allow,
            (Some("http://others:1"), Some(1)),
        ),
        (Some(EVE), "/", Outcome::Deny, (None, None)),
    ];
    for (who, path, outcome, (upstream, grant)) in cases {
        let id = who.as_ref().map(identity);
        let d = evaluate(p, id.as_ref(), &at(path));
        let label = format!("{:?} {path}", who.as_ref().map(|w| w.sub));
        assert_eq!(d.outcome, *outcome, "{label}: {}", d.reason);
        if d.outcome == Outcome::Allow {
            assert_eq!(
                Some(route.target(d.target).describe().as_str()),
                *upstream,
                "{label}"
            );
            assert_eq!(d.grant, *grant, "{label}");
        } else {
            assert_eq!(d.reason, portcullis::policy::eval::NO_UPSTREAM, "{label}");
        }
    }
}
