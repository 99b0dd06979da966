//! Micro-benchmarks of the per-request hot path (criterion; never asserted in tests).
//! Targets (issue 9): policy decision with 100 criteria < 1 µs; session cookie open < 2 µs;
//! the assertion JWT signed at most once per session per minute.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::path::Path;

use portcullis::auth::assertion::Signer;
use portcullis::auth::revoked::RevocationStore;
use portcullis::auth::session::{now, CookieJar, CookieKey, Session};
use portcullis::config::{self, MapEnv};
use portcullis::policy::{evaluate, ClaimValue, Facts, Identity};

fn identity() -> Identity {
    let mut claims = std::collections::BTreeMap::new();
    claims.insert("department".to_string(), ClaimValue::Str("eng".into()));
    Identity {
        iss: "https://idp.example.com".into(),
        sub: "248289761001".into(),
        email: Some("user99@example.com".into()),
        email_verified: Some(true),
        groups: vec!["staff".into(), "openclaw-admins".into(), "eng".into()],
        claims,
    }
}

fn policy_100() -> portcullis::policy::Policy {
    let mut yaml = String::from("insecure_server: true\nroutes:\n  - from: https://a.test\n    to: http://b:1\n    policy:\n      - allow:\n          or:\n");
    for i in 0..97 {
        yaml.push_str(&format!(
            "            - email: {{ is: user{i}x@example.com }}\n"
        ));
    }
    yaml.push_str("            - groups: { has: nobody }\n            - domain: { is: other.test }\n            - email: { is: user99@example.com }\n");
    yaml.push_str(
        "        deny:\n          or:\n            - http_path: { starts_with: /admin }\n",
    );
    let mut c = config::load_str(&yaml, "bench.yaml", Path::new("."), &MapEnv::default())
        .expect("bench config");
    c.routes.remove(0).policy
}

struct NoneRevoked;
impl RevocationStore for NoneRevoked {
    fn revoke(&self, _: &[u8; 16], _: u64) -> Result<(), String> {
        Ok(())
    }
    fn is_revoked(&self, _: &[u8; 16]) -> bool {
        false
    }
}

fn benches(c: &mut Criterion) {
    let policy = policy_100();
    let id = identity();
    let method = http::Method::GET;
    let facts = Facts {
        method: &method,
        path: "/chat/session",
        ip: Some("203.0.113.7".parse().expect("ip")),
    };
    c.bench_function("policy decision, 100 criteria, match last", |b| {
        b.iter(|| evaluate(black_box(&policy), Some(black_box(&id)), black_box(&facts)))
    });

    let key = CookieKey::new(&[7u8; 32]).expect("key");
    let session = Session {
        id: [1; 16],
        identity: id.clone().into(),
        expires: now() + 3600,
        id_token_exp: now() + 3600,
        refresh_token: Some("x".repeat(43)),
        id_token: Some("e".repeat(900)),
    };
    let sealed = key
        .seal("session", "openclaw.example.com", &session)
        .expect("seal");
    let jar = CookieJar {
        name: "_portcullis".into(),
        domain: None,
        max_age: std::time::Duration::from_secs(3600),
    };
    let mut headers = http::HeaderMap::new();
    for v in jar.set_session(&sealed, &http::HeaderMap::new()) {
        let pair = v
            .to_str()
            .expect("ascii")
            .split(';')
            .next()
            .expect("pair")
            .to_string();
        headers.append(http::header::COOKIE, pair.parse().expect("header"));
    }
    let store = NoneRevoked;
    c.bench_function("session cookie open (read, decrypt, decode, checks)", |b| {
        b.iter(|| {
            let text = jar.read_session(black_box(&headers)).expect("cookie");
            let s: Session = key
                .open("session", "openclaw.example.com", &text)
                .expect("open");
            black_box(s.expires > now() && !store.is_revoked(&s.id))
        })
    });

    let (signer, _) = Signer::new(None).expect("signer");
    assert!(
        signer
            .assertion(&[9; 16], 0, (true, "a"), "b", &id)
            .is_some(),
        "signing fails"
    );

    c.bench_function("assertion JWT (cached: signed once a minute)", |b| {
        b.iter(|| {
            signer.assertion(
                black_box(&[1; 16]),
                0,
                (true, "openclaw.example.com"),
                "openclaw-gateway",
                black_box(&id),
            )
        })
    });
    // The counter lives outside: criterion calls the outer closure once per sample.
    let n = std::cell::Cell::new(0u64);
    c.bench_function("assertion JWT (signing, uncached)", |b| {
        b.iter(|| {
            n.set(n.get() + 1);
            let mut sid = [0u8; 16];
            sid[..8].copy_from_slice(&n.get().to_le_bytes());

            signer.assertion(
                &sid,
                0,
                (true, "openclaw.example.com"),
                "openclaw-gateway",
                &id,
            )
        })
    });
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
