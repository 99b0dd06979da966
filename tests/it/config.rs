//! Configuration errors: every one says `file:line:col: message`, and nothing is ignored.

use portcullis::config::{self, MapEnv};
use std::path::Path;

fn errors(yaml: &str) -> Vec<String> {
    errors_env(yaml, MapEnv::default())
}

fn errors_env(yaml: &str, env: MapEnv) -> Vec<String> {
    match config::load_str(yaml, "config.yaml", Path::new("."), &env) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

fn ok(yaml: &str) -> config::Compiled {
    config::load_str(yaml, "config.yaml", Path::new("."), &MapEnv::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

const HEAD: &str = "insecure_server: true\nroutes:\n";

fn assert_error(yaml: &str, at: &str, text: &str) {
    let errs = errors(yaml);
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&format!("config.yaml:{at}: ")) && e.contains(text)),
        "wanted `config.yaml:{at}: …{text}…`, got {errs:#?}"
    );
}

#[test]
fn unknown_keys_are_errors_with_their_position() {
    assert_error(
        "insecure_server: true\nbogus: 1\nroutes: []\n",
        "2:1",
        "unknown field `bogus`",
    );
    assert_error(
        &format!("{HEAD}  - from: http://a\n    to: http://b\n    alow_websockets: true\n"),
        "5:5",
        "unknown field `alow_websockets`",
    );
    assert_error(
        "certificates:\n  - cert: a\n    key: b\n    chain: c\nroutes: []\n",
        "4:5",
        "unknown field `chain`",
    );
}

#[test]
fn syntax_and_type_errors_have_positions() {
    assert_error("routes:\n  - from: x\n    to: [a, b\n", "3:9", "unclosed");
    assert_error("insecure_server: maybe\nroutes: []\n", "1:18", "boolean");
    assert_error(
        &format!("{HEAD}  - to: http://b\n"),
        "3:5",
        "missing field `from`",
    );
    assert_error("address: a\naddress: b\nroutes: []\n", "2:1", "duplicate");
}

#[test]
fn semantic_errors_point_at_the_value() {
    let r = |extra: &str| {
        format!("{HEAD}  - from: http://app.test\n    to: http://up:1\n    allow_public_unauthenticated_access: true\n{extra}")
    };
    assert_error(
        &format!("{HEAD}  - from: not a url\n    to: http://b\n"),
        "3:11",
        "from: `not a url` is not a URL",
    );
    assert_error(
        &format!("{HEAD}  - from: ftp://a\n    to: http://b\n"),
        "3:11",
        "scheme `ftp`",
    );
    assert_error(
        &format!("{HEAD}  - from: https://a/path\n    to: http://b\n"),
        "3:11",
        "only scheme, host and port",
    );
    assert_error(
        &format!("{HEAD}  - from: https://a\n    to: ftp://b\n"),
        "4:9",
        "upstreams are http:// or https://",
    );
    assert_error(
        &format!("{HEAD}  - from: https://a\n    to: [http://b, 'file:///etc']\n"),
        "4:20",
        "file:///etc",
    );
    assert_error(
        &format!("{HEAD}  - from: https://a\n    to: http://b\n    prefix: /a\n    path: /b\n"),
        "3:5",
        "at most one of `prefix`, `path` and `regex`",
    );
    assert_error(&r("    timeout: 30\n"), "6:14", "needs a unit");
    assert_error(&r("    regex: '(['\n"), "6:12", "regex");
    assert_error(&r("    prefix_rewrite: x\n"), "6:21", "must start with `/`");
    assert_error(
        &format!("{HEAD}  - from: https://a\n    to: http://b\n    prefix: /a/../b\n"),
        "5:13",
        "canonical form",
    );
    assert_error(
        &r("    set_request_headers:\n      'bad header': x\n"),
        "7:7",
        "not a valid header name",
    );
    for name in [
        "Host",
        "content-length",
        "Connection",
        "Transfer-Encoding",
        "upgrade",
    ] {
        assert_error(
            &r(&format!("    set_request_headers:\n      {name}: x\n")),
            "7:7",
            "is Portcullis's to write",
        );
    }
    assert_error(
        &r("    tls_custom_ca: /nonexistent/ca.pem\n"),
        "6:20",
        "cannot read",
    );
    assert_error(
        "insecure_server: true\ncookie_secret: c2hvcnQ=\nroutes: []\n",
        "2:16",
        "portcullis secret",
    );
    assert_error(
        "address: nowhere\nroutes: []\n",
        "1:10",
        "not a listen address",
    );
    assert_error(
        "insecure_server: true\nlog_format: xml\nroutes: []\n",
        "2:13",
        "pretty or json",
    );
}

#[test]
fn policy_mistakes_are_config_errors() {
    let p = |policy: &str| {
        format!("{HEAD}  - from: https://a\n    to: http://b\n    policy:\n{policy}")
    };
    assert_error(
        &p("      - allow:\n          or:\n            - emial: { is: a@b.c }\n"),
        "8:15",
        "unknown criterion `emial`",
    );
    assert_error(
        &p("      - allow:\n          or:\n            - email: { has: a@b.c }\n"),
        "8:24",
        "`has` is not a matcher for `email`",
    );
    assert_error(
        &p("      - allow:\n          or:\n            - groups: { is: admins }\n"),
        "8:25",
        "`is` is not a matcher for `groups`",
    );
    assert_error(
        &p("      - allow:\n          or:\n            - source_ip: { is: 10.0.0.300/8 }\n"),
        "8:32",
        "not an IP address or CIDR",
    );
    assert_error(
        &p("      - allow:\n          or: []\n"),
        "7:11",
        "empty list",
    );
    assert_error(
        &p("      - allow:\n          xor:\n            - email: { is: a@b.c }\n"),
        "7:11",
        "unknown logical operator `xor`",
    );
    assert_error(
        &p("      - permit:\n          or:\n            - email: { is: a@b.c }\n"),
        "6:9",
        "unknown policy action `permit`",
    );
    assert_error(
        &p("      - allow:\n          or:\n            - authenticated_user: false\n"),
        "8:35",
        "takes `true`",
    );
    assert_error(
        &p("      - allow:\n          or:\n            - http_method: { is: 'GE T' }\n"),
        "8:34",
        "not an HTTP method",
    );
    assert_error(
        &format!("{HEAD}  - from: https://a\n    to: http://b\n    allow_public_unauthenticated_access: true\n    allowed_users: [a@b.c]\n"),
        "5:42",
        "cannot be combined",
    );
}

#[test]
fn every_error_in_a_file_is_reported_at_once() {
    let errs = errors(&format!("{HEAD}  - from: ftp://a\n    to: ftp://b\n  - from: https://c\n    to: http://d\n    timeout: soon\n"));
    assert_eq!(errs.len(), 3, "{errs:#?}");
}

#[test]
fn environment_overrides_top_level_keys_and_names_itself_in_errors() {
    let yaml = format!("{HEAD}  - from: http://a\n    to: http://b\n    allow_public_unauthenticated_access: true\n");
    let mut env = MapEnv::default();
    env.0
        .insert("PORTCULLIS_ADDRESS".into(), "127.0.0.1:9999".into());
    env.0.insert("PORTCULLIS_TIMEOUT_IDLE".into(), "7s".into());
    let c = config::load_str(&yaml, "config.yaml", Path::new("."), &env).unwrap();
    assert_eq!(c.settings.address.to_string(), "127.0.0.1:9999");
    assert_eq!(c.settings.timeout_idle.as_secs(), 7);
    let mut bad = MapEnv::default();
    bad.0
        .insert("PORTCULLIS_TIMEOUT_IDLE".into(), "soon".into());
    let errs = errors_env(&yaml, bad);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("env PORTCULLIS_TIMEOUT_IDLE: ")),
        "{errs:?}"
    );
    let mut bad = MapEnv::default();
    bad.0
        .insert("PORTCULLIS_INSECURE_SERVER".into(), "perhaps".into());
    let errs = errors_env(&yaml, bad);
    assert!(
        errs.iter()
            .any(|e| e.starts_with("env PORTCULLIS_INSECURE_SERVER")),
        "{errs:?}"
    );
}

#[test]
fn secrets_come_inline_or_from_their_file_twin() {
    let dir = tempfile::tempdir().unwrap();
    let key = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
    std::fs::write(dir.path().join("cookie.key"), format!("{key}\n")).unwrap();
    let base = "insecure_server: true\nroutes:\n  - from: http://a\n    to: http://b\n    allow_public_unauthenticated_access: true\n";
    let c = config::load_str(
        &format!("cookie_secret_file: cookie.key\n{base}"),
        "config.yaml",
        dir.path(),
        &MapEnv::default(),
    )
    .unwrap();
    assert!(c.settings.cookie.secret.is_some());
    let errs = errors(&format!(
        "cookie_secret: {key}\ncookie_secret_file: x\n{base}"
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("either cookie_secret or cookie_secret_file")),
        "{errs:?}"
    );
}

#[test]
fn defaults_are_as_documented() {
    let c = ok(&format!("{HEAD}  - from: http://a\n    to: http://b\n    allow_public_unauthenticated_access: true\n"));
    assert_eq!(c.settings.timeout_read_header.as_secs(), 10);
    assert_eq!(c.settings.timeout_idle.as_secs(), 300);
    assert_eq!(c.settings.cookie.name, "_portcullis");
    assert_eq!(c.settings.cookie.expire.as_secs(), 14 * 3600);
    assert_eq!(c.routes[0].timeout.map(|t| t.as_secs()), Some(30));
    assert!(c.routes[0].idle_timeout.is_none());
    assert!(c.settings.http_redirect_addr.is_none());
}

#[test]
fn the_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml");
    let mut env = MapEnv::default();
    env.0.insert(
        "PORTCULLIS_COOKIE_SECRET".into(),
        "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=".into(),
    );
    env.0
        .insert("PORTCULLIS_IDP_CLIENT_SECRET".into(), "x".into());
    if let Err(e) = config::load(&path, &env) {
        panic!("config.example.yaml:\n{e}");
    }
}

#[test]
fn autocert_settings_are_checked() {
    let route = "routes:\n  - from: https://app.example.com\n    to: http://up:1\n    allow_public_unauthenticated_access: true\n";
    assert_error(
        &format!("insecure_server: true\nautocert: true\n{route}"),
        "2:11",
        "autocert needs TLS",
    );
    assert_error(
        &format!(
            "autocert: true\nautocert_use_staging: true\nautocert_ca: https://ca.test/dir\n{route}"
        ),
        "3:14",
        "keep one",
    );
    assert_error(
        &format!("autocert: true\nautocert_ca: http://ca.test/dir\n{route}"),
        "2:14",
        "not an https URL",
    );
    assert_error(
        &format!("autocert: true\nautocert_email: eve@a@b.test\n{route}"),
        "2:17",
        "not an email address",
    );
    assert_error(
        &format!("autocert: true\nautocert_trusted_ca: /nonexistent/ca.pem\n{route}"),
        "2:22",
        "cannot read",
    );

    // Defaults: Let's Encrypt production, cache under data_dir, HTTP-01 only with a redirect port.
    let c = ok(&format!("autocert: true\ndata_dir: /var/lib/p\n{route}"));
    let a = c.settings.autocert.unwrap();
    assert_eq!(a.directory, config::settings::LETS_ENCRYPT);
    assert_eq!(a.dir, Path::new("/var/lib/p/autocert"));
    assert!(!a.http01);
    assert!(a.contacts.is_empty());
    let c = ok(&format!(
        "autocert: true\nautocert_use_staging: true\nautocert_email: ops@example.com\nautocert_dir: /c\nhttp_redirect_addr: ':80'\n{route}"
    ));
    let a = c.settings.autocert.unwrap();
    assert_eq!(a.directory, config::settings::LETS_ENCRYPT_STAGING);
    assert_eq!(a.contacts, vec!["mailto:ops@example.com".to_string()]);
    assert_eq!(a.dir, Path::new("/c"));
    assert!(a.http01);

    // autocert_* without autocert is not silently ignored.
    let c = ok(&format!("autocert_email: ops@example.com\n{route}"));
    assert!(c
        .warnings
        .iter()
        .any(|w| w.contains("`autocert_email` is set but `autocert` is not")));
}

#[test]
fn connection_caps_and_hsts_are_checked() {
    let route = "routes:\n  - from: http://a\n    to: http://b\n    allow_public_unauthenticated_access: true\n";
    assert_error(
        &format!("insecure_server: true\nmax_connections_per_ip: 0\n{route}"),
        "2:25",
        "at least 1",
    );
    assert_error(
        &format!("insecure_server: true\nmax_connections: -1\n{route}"),
        "2:18",
        "",
    );
    assert_error(
        &format!("insecure_server: true\nhsts_max_age: forever\n{route}"),
        "2:15",
        "",
    );
    let c = ok(&format!("insecure_server: true\n{route}"));
    assert_eq!(c.settings.max_connections, 16384);
    assert_eq!(c.settings.max_connections_per_ip, 1024);
    assert_eq!(c.settings.hsts_max_age, None);
    let c = ok(&format!(
        "insecure_server: true\nhsts_max_age: 1h\nmax_connections: 10\n{route}"
    ));
    assert_eq!(c.settings.hsts_max_age.map(|d| d.as_secs()), Some(3600));
    assert_eq!(c.settings.max_connections, 10);
}

fn env(pairs: &[(&str, &str)]) -> MapEnv {
    MapEnv(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Every error about a value names where the value came from: the key's `file:line:col`, the
/// `*_file` key and the file it read, or the environment variable.
#[test]
fn errors_about_secrets_keys_and_files_name_where_the_value_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("short.txt"), "c2hvcnQ=\n").unwrap();
    std::fs::write(d.join("notpem.txt"), "not a certificate\n").unwrap();
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    std::fs::write(d.join("p384.pem"), p384.serialize_pem()).unwrap();
    let load = |yaml: &str, env: MapEnv| -> Vec<String> {
        match config::load_str(yaml, "config.yaml", d, &env) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    };
    let has = |errs: &[String], want: &str| {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "wanted `{want}…`, got {errs:#?}"
        );
    };
    let route = "routes:\n  - from: https://a.test\n    to: http://127.0.0.1:1\n    allow_public_unauthenticated_access: true\n";
    has(
        &load(
            &format!("cookie_secret: c2hvcnQ=\n{route}"),
            MapEnv::default(),
        ),
        "config.yaml:1:16: cookie_secret: must be 32 random bytes",
    );
    has(
        &load(
            &format!("cookie_secret_file: short.txt\n{route}"),
            MapEnv::default(),
        ),
        "config.yaml:1:21: cookie_secret_file `short.txt`: must be 32 random bytes",
    );
    has(
        &load(route, env(&[("PORTCULLIS_COOKIE_SECRET", "c2hvcnQ=")])),
        "env PORTCULLIS_COOKIE_SECRET: cookie_secret: must be 32 random bytes",
    );
    has(
        &load(
            &format!("signing_key: |\n  not a key\n{route}"),
            MapEnv::default(),
        ),
        "config.yaml:2:3: signing_key: no PEM private key",
    );
    has(
        &load(
            &format!("signing_key_file: p384.pem\n{route}"),
            MapEnv::default(),
        ),
        "config.yaml:1:19: signing_key_file `p384.pem`: this is an EC P-384 key",
    );
    has(
        &load(route, env(&[("PORTCULLIS_SIGNING_KEY_FILE", "p384.pem")])),
        "env PORTCULLIS_SIGNING_KEY_FILE: signing_key_file `p384.pem`: this is an EC P-384 key",
    );
    has(
        &load(
            &format!("autocert: true\nautocert_trusted_ca: notpem.txt\n{route}"),
            MapEnv::default(),
        ),
        "config.yaml:2:22: autocert_trusted_ca `notpem.txt`: ",
    );
    has(
        &load(
            &format!("idp_provider_url: https://idp.test\nidp_client_id: x\n{route}"),
            MapEnv::default(),
        ),
        "config.yaml:1:19: sign-in needs cookie_secret",
    );
}

#[test]
fn with_cookie_domain_every_route_host_is_under_it() {
    let yaml = "insecure_server: true\ncookie_domain: .example.test\nroutes:\n\
                \x20 - from: http://example.test\n    to: http://b\n    allow_any_authenticated_user: true\n\
                \x20 - from: http://a.example.test\n    to: http://b\n    allow_any_authenticated_user: true\n\
                \x20 - from: http://other.test\n    to: http://b\n    allow_any_authenticated_user: true\n\
                \x20 - from: http://notexample.test\n    to: http://b\n    allow_any_authenticated_user: true\n";
    let errs = errors(yaml);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with(
            "config.yaml:10:11: from: `other.test` is not under cookie_domain `example.test`"
        ),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with("config.yaml:13:11: from: `notexample.test`"),
        "{errs:#?}"
    );
}

/// A certificate that cannot be loaded is named by its own `certificates` entry.
#[test]
fn a_certificate_error_points_at_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
    std::fs::write(d.join("a.crt"), good.cert.pem()).unwrap();
    std::fs::write(d.join("a.key"), good.signing_key.serialize_pem()).unwrap();
    std::fs::write(d.join("b.crt"), "not a certificate").unwrap();
    let cfg = d.join("config.yaml");
    std::fs::write(
        &cfg,
        "certificates:\n  - cert: a.crt\n    key: a.key\n  - cert: b.crt\n    key: a.key\nroutes:\n  - from: https://a.test\n    to: http://127.0.0.1:1\n    allow_public_unauthenticated_access: true\n",
    )
    .unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let err = portcullis::runtime::Runtime::load(&cfg, &MapEnv::default())
        .err()
        .expect("a bad certificate is refused")
        .to_string();
    assert!(
        err.starts_with(&format!("{}:4:5: certificates: ", cfg.display())),
        "{err}"
    );
}

const TESTED: &str = "insecure_server: true
routes:
  - from: https://app.test
    to: http://127.0.0.1:1
    policy:
      - allow:
          or:
            - domain: { is: example.com }
        deny:
          and:
            - http_path: { starts_with: /admin }
            - not: [ { groups: { has: admins } } ]
";

#[test]
fn policy_tests_are_parsed_with_positions_and_unknown_keys_are_errors() {
    let tests = |t: &str| format!("{TESTED}tests:\n{t}");
    assert_error(
        &tests("  - url: https://app.test/\n    expect: maybe\n"),
        "15:13",
        "use allow, deny or sign_in",
    );
    assert_error(
        &tests("  - url: https://app.test/\n    expect: allow\n    mail: a@b\n"),
        "16:5",
        "unknown field `mail`",
    );
    assert_error(
        &tests("  - url: not a url\n    expect: deny\n"),
        "14:10",
        "is not a URL",
    );
    assert_error(
        &tests("  - url: https://app.test/\n    email: not-an-email\n    expect: deny\n"),
        "15:12",
        "not a plain email",
    );
    assert_error(
        &tests("  - url: https://app.test/\n    ip: 10.0.0\n    expect: deny\n"),
        "15:9",
        "not an IP address",
    );
    assert_error(
        &tests("  - url: https://app.test/\n    method: 'G T'\n    expect: deny\n"),
        "15:13",
        "not an HTTP method",
    );
    assert_error(
        &tests("  - url: https://app.test/\n    groups: [admins]\n    expect: deny\n"),
        "14:5",
        "give an email or a user",
    );
    let env = env(&[("PORTCULLIS_TESTS", "[]")]);
    let errs = errors_env(TESTED, env);
    assert!(
        errs.iter().any(
            |e| e.starts_with("env PORTCULLIS_TESTS: tests can only be set in the config file")
        ),
        "{errs:?}"
    );
}

#[test]
fn a_config_whose_own_tests_fail_is_refused_naming_the_case_and_what_decided() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    let good = format!(
        "{TESTED}tests:\n\
         \x20 - name: staff in\n    url: https://app.test/\n    email: alice@example.com\n    expect: allow\n\
         \x20 - url: https://app.test/admin\n    email: alice@example.com\n    expect: deny\n\
         \x20 - url: https://app.test/admin\n    email: root@example.com\n    groups: [admins]\n    expect: allow\n\
         \x20 - name: strangers out\n    url: https://app.test/\n    email: eve@evil.test\n    expect: deny\n\
         \x20 - url: https://app.test/\n    expect: sign_in\n\
         \x20 - url: https://nowhere.test/\n    expect: deny\n"
    );
    std::fs::write(&cfg, &good).unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = portcullis::runtime::Runtime::load(&cfg, &MapEnv::default());
    assert!(rt.is_ok(), "{}", rt.err().unwrap());
    // The same tests against a policy that lets every signed-in user in.
    let bad = good.replace(
        "- domain: { is: example.com }",
        "- authenticated_user: true",
    );
    std::fs::write(&cfg, &bad).unwrap();
    let errs = portcullis::runtime::Runtime::load(&cfg, &MapEnv::default())
        .err()
        .expect("refused")
        .to_string();
    let lines: Vec<&str> = errs.lines().collect();
    assert_eq!(lines.len(), 1, "{errs}");
    let want = format!(
        "{}:25:5: test \"strangers out\" (GET https://app.test/ as eve@evil.test): expected deny, got allow: route `https://app.test` ({}:3), decided by policy at {}:6:",
        cfg.display(),
        cfg.display(),
        cfg.display()
    );
    assert!(lines[0].starts_with(&want), "{errs}\nwanted {want}");
}

#[test]
fn to_entries_and_grants_are_checked_with_their_positions() {
    let route = |body: &str| {
        format!("{HEAD}  - from: https://a\n{body}    allow_any_authenticated_user: true\n")
    };
    // A working config of both, as a control.
    let good = ok(&route(
        "    to:\n      - when: { groups: { has: a } }\n        to: http://a\n      - to: [http://b, http://c]\n\
         \x20   grants:\n      - when: { or: [ { email: { is: x@y.test } } ] }\n        set_request_headers: { X-Role: admin }\n      - set_request_headers: { X-Role: reader }\n",
    ));
    assert!(good.warnings.is_empty(), "{:?}", good.warnings);
    let r = &good.routes[0];
    assert_eq!(r.targets.len(), 2);
    assert_eq!(r.targets[1].describe(), "http://b, http://c");
    assert_eq!(r.policy.targets.len(), 2);
    assert_eq!(r.grants.len(), 2);
    assert!(r.policy.uses_identity);
    // The route owns what its grants set: a client's copy is stripped.
    assert!(r.owned_headers.iter().any(|h| h == "x-role"));

    // Grants without a default entry: users no grant picks get no header. Said, not refused.
    let partial = ok(&route(
        "    to: http://a\n    grants:\n      - when: { groups: { has: a } }\n        set_request_headers: { X-Role: admin }\n",
    ));
    assert!(
        partial
            .warnings
            .iter()
            .any(|w| w.starts_with("config.yaml:6:7: grants: no entry without `when`")),
        "{:?}",
        partial.warnings
    );
    assert_error(
        &route("    to:\n      - to: http://b\n      - when: { groups: { has: a } }\n        to: http://a\n"),
        "5:9",
        "matches everyone",
    );
    assert_error(
        &route("    to:\n      - when: { bogus: 1 }\n        to: http://a\n"),
        "5:17",
        "unknown criterion `bogus`",
    );
    assert_error(
        &route("    to:\n      - when: { groups: { has: a } }\n        to: http://a\n        weight: 2\n"),
        "7:9",
        "unknown key `weight` in a `to` entry",
    );
    assert_error(
        &route("    to:\n      - when: { groups: { has: a } }\n"),
        "5:9",
        "needs `to`",
    );
    assert_error(
        &route("    to:\n      - when: { groups: { has: a } }\n        to: ftp://a\n"),
        "6:13",
        "upstreams are http:// or https://",
    );
    assert_error(
        &route("    to: { a: b }\n"),
        "4:9",
        "a list of `{when, to}` entries",
    );
    assert_error(
        &route("    to: [http://a, { when: { groups: { has: a } }, to: http://b }]\n"),
        "4:9",
        "a list of `{when, to}` entries",
    );
    assert_error(
        &route("    to:\n      - when: groups\n        to: http://a\n"),
        "5:15",
        "`when` takes criteria",
    );
    let to = "    to: http://a\n";
    assert_error(
        &route(&format!("{to}    grants:\n      - when: {{ groups: {{ has: a }} }}\n        set_request_headers: {{ Host: x }}\n")),
        "7:30",
        "is Portcullis's to write",
    );
    assert_error(
        &route(&format!("{to}    grants:\n      - set_request_headers: {{ X-A: b }}\n      - when: {{ groups: {{ has: a }} }}\n        set_request_headers: {{ X-A: c }}\n")),
        "6:9",
        "matches everyone",
    );
    assert_error(
        &route(&format!(
            "{to}    grants:\n      - when: {{ groups: {{ has: a }} }}\n"
        )),
        "6:9",
        "needs `set_request_headers`",
    );
    assert_error(
        &route(&format!("{to}    grants: []\n")),
        "5:13",
        "the list is empty",
    );
    // A grant that leaves out a name the others set, and a second route to the same upstream
    // that sets none of it: both said (for OpenClaw, those users would have no cap).
    let gaps = ok(&format!(
        "{HEAD}  - from: https://a\n    to: http://gw:1\n    allow_any_authenticated_user: true\n    grants:\n\
         \x20     - when: {{ groups: {{ has: a }} }}\n        set_request_headers: {{ X-OpenClaw-Scopes: operator.admin }}\n\
         \x20     - set_request_headers: {{ X-Other: x }}\n\
         \x20 - from: https://b\n    to: [http://gw:1]\n    allow_any_authenticated_user: true\n\
         \x20 - from: https://c\n    to: http://elsewhere:1\n    allow_any_authenticated_user: true\n"
    ));
    let w = gaps.warnings.join("\n");
    assert!(
        w.contains("config.yaml:9:9: this grant does not set `x-openclaw-scopes`"),
        "{w}"
    );
    assert!(w.contains("config.yaml:10: route `https://b` reaches the same upstream as route `https://a` (line 3)"), "{w}");
    assert!(!w.contains("https://c`"), "{w}");
    assert_error(
        &route(&format!("{to}    grants: {{ X-A: b }}\n")),
        "5:13",
        "grants: give a list",
    );
    assert_error(
        &route(&format!(
            "{to}    grants:\n      - set_request_headers: {{ X-A: [b] }}\n"
        )),
        "6:37",
        "must be a string",
    );
}
