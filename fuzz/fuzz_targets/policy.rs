//! Any text as a route's `policy:` block, compiled and then evaluated for a few identities.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::policy::{evaluate, Facts, Identity};

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
        ..Default::default()
    };
    for path in ["/", "/admin/x"] {
        let facts = Facts {
            method: &http::Method::GET,
            path,
            ip: Some("10.1.2.3".parse().unwrap()),
        };
        let anon = evaluate(&policy, None, &facts);
        // Invariant: an allow that names a user never lets an anonymous request in.
        if let Some(rule) = anon.rule {
            if anon.outcome == portcullis::policy::Outcome::Allow {
                let r = policy.rules.iter().find(|r| &r.origin == rule).unwrap();
                assert!(!r.allow_needs_identity);
            }
        }
        let _ = evaluate(&policy, Some(&id), &facts);
    }
});
