//! Micro-benchmarks of the per-request hot path (criterion; never asserted in tests).
//! Targets (issue 9): policy decision with 100 criteria < 1 µs; session cookie open < 2 µs;
//! the assertion JWT signed at most once per session per minute.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::path::Path;

use portcullis::auth::assertion::Signer;
use portcullis::auth::revoked::RevocationStore;
use portcullis::auth::session::{CookieJar, CookieKey, Session};
use portcullis::auth::Auth;
use portcullis::clock::now;
use portcullis::config::{self, MapEnv};
use portcullis::http::h1;
use portcullis::policy::{evaluate, ClaimValue, Facts, Identity};
use portcullis::proxy::headers;

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
        ..Default::default()
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

fn shadow_policy() -> portcullis::policy::Policy {
    let yaml = "insecure_server: true\nroutes:\n  - from: https://a.test\n    to: http://b:1\n    policy:\n      - allow:\n          and:\n            - domain: { is: example.com }\n            - groups: { has: openclaw-admins }\n        deny:\n          or:\n            - http_path: { starts_with: /admin }\n            - http_method: { in: [DELETE, PUT] }\n            - email: { ends_with: .contractor@example.com }\n";
    let mut c = config::load_str(yaml, "bench.yaml", Path::new("."), &MapEnv::default())
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

/// The Cookie headers a browser sends back after `jar` stored `sealed` (its `name=value` pairs).
fn cookie_headers(jar: &CookieJar, sealed: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for v in jar.set_session(sealed, &http::HeaderMap::new()) {
        let pair = v.to_str().expect("ascii").split(';').next().expect("pair");
        headers.append(http::header::COOKIE, pair.parse().expect("header"));
    }
    headers
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
    // A shadow policy as ops write one to tighten a route: a few criteria. Its cost is what
    // the request path pays beside the decision (compared in docs/performance.md).
    let shadow = shadow_policy();
    c.bench_function("shadow policy beside the decision (5 criteria)", |b| {
        b.iter(|| {
            let d = evaluate(black_box(&policy), Some(black_box(&id)), black_box(&facts));
            let s = evaluate(black_box(&shadow), Some(black_box(&id)), black_box(&facts));
            black_box(d.outcome != s.outcome)
        })
    });

    let key = CookieKey::new(&[7u8; 32]).expect("key");
    let session = Session {
        id: [1; 16],
        identity: id.clone().into(),
        expires: now() + 3600,
        id_token_exp: now() + 3600,
        refresh_token: Some("x".repeat(43)),
    };
    let sealed = key
        .seal("session", "openclaw.example.com", &session)
        .expect("seal");
    let jar = CookieJar::new("_portcullis", None, std::time::Duration::from_secs(3600));
    let headers = cookie_headers(&jar, &sealed);
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

    // What every signed-in request does: the worker's kept session for this cookie, found by
    // the cookie's tail and compared whole, then expiry and revocation checked.
    let yaml = "insecure_server: true\ncookie_secret: BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\nroutes:\n  - from: https://openclaw.example.com\n    to: http://b:1\n    allow_any_authenticated_user: true\n";
    let compiled = config::load_str(yaml, "bench.yaml", Path::new("."), &MapEnv::default())
        .expect("bench config");
    let (auth, _) = Auth::build(&compiled.settings, None).expect("auth");
    let sealed_by_auth = auth.seal("openclaw.example.com", &session).expect("seal");
    let kept_headers = cookie_headers(&auth.jar, &sealed_by_auth);
    assert!(
        auth.open(&store, "openclaw.example.com", &kept_headers)
            .is_some(),
        "the bench session does not open"
    );
    c.bench_function("session per request (kept by the worker)", |b| {
        b.iter(|| auth.open(&store, "openclaw.example.com", black_box(&kept_headers)))
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

    // A browser's navigation request as Chromium sends it, with the session cookie among
    // others: what the upstream gets is made from it in place.
    let browser: http::HeaderMap = [
        ("host", "openclaw.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        (
            "cookie",
            "theme=dark; _portcullis=v1.1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; lang=en",
        ),
        ("sec-ch-ua", "\"Chromium\";v=\"156\""),
        ("sec-ch-ua-mobile", "?0"),
        ("sec-ch-ua-platform", "\"Linux\""),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "none"),
        ("sec-fetch-user", "?1"),
        ("upgrade-insecure-requests", "1"),
        ("priority", "u=0, i"),
    ]
    .into_iter()
    .map(|(k, v)| {
        (
            http::HeaderName::from_static(k),
            http::HeaderValue::from_str(v).expect("value"),
        )
    })
    .collect();
    let peer = http::HeaderValue::from_static("203.0.113.9");
    let identity = [
        (
            http::HeaderName::from_static("x-portcullis-jwt-assertion"),
            http::HeaderValue::from_static("eyJhbGciOiJFUzI1NiJ9.e30.sig"),
        ),
        (
            http::HeaderName::from_static("x-forwarded-user"),
            http::HeaderValue::from_static("https://idp.example.com#alice"),
        ),
    ];
    let owned = [http::HeaderName::from_static("x-forwarded-user")];
    let host = http::HeaderValue::from_static("127.0.0.1:18789");
    let mut head = Vec::with_capacity(4096);
    c.bench_function("upstream request head (browser request, 15 headers)", |b| {
        b.iter_batched(
            || browser.clone(),
            |h| {
                let up = headers::request_headers(
                    h,
                    headers::Forwarding {
                        forwarded_for: &peer,
                        https: true,
                        authority: "openclaw.example.com",
                        host_header: host.clone(),
                        websocket: false,
                        cookie_name: "_portcullis",
                        owned_cookies: &[],
                        owned: &owned,
                        remove: &[],
                        set: &[],
                        granted: &[],
                        identity: identity.to_vec(),
                    },
                );
                head.clear();
                h1::encode_request(
                    &http::Method::GET,
                    "/chat?session=main",
                    &host,
                    up.iter(),
                    h1::ReqFraming::None,
                    &mut head,
                );
                head.len()
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
