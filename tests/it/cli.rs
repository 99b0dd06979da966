//! The command line, run as the real binary.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    c.env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            c.env_remove(k);
        }
    }
    c
}

fn write(dir: &std::path::Path, yaml: &str) -> std::path::PathBuf {
    let p = dir.join("config.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

/// The binary running as a server on the ports it chose (`127.0.0.1:0`), its standard error
/// read line by line; killed when dropped, so a failed assertion leaves nothing running.
struct Running {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Running {
    fn start(cfg: &std::path::Path) -> Running {
        use std::io::BufRead;
        let mut child = bin()
            .arg("--config")
            .arg(cfg)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(strip_ansi(&line));
            }
        });
        Running { child, log }
    }

    /// The first log line `matches` accepts, waiting for it (10 s at most).
    fn wait_log(&self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| matches(l)) {
                return l.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no log line for {what}; the log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `addr=` of the log line that says `what` (`portcullis listening`, `admin listener`).
    fn addr(&self, what: &str) -> std::net::SocketAddr {
        let line = self.wait_log(what, |l| l.contains(what));
        let at = line.find("addr=").expect("an addr field") + 5;
        line[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// How many log lines `matches` accepts so far.
    fn count(&self, matches: impl Fn(&str) -> bool) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| matches(l))
            .count()
    }

    /// Sends SIGTERM and waits for the exit code.
    fn term(mut self) -> Option<i32> {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        self.child.wait().unwrap().code()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A log line without its colour escapes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

const POLICY: &str = "insecure_server: true
routes:
  - from: https://app.example.com
    to: http://127.0.0.1:1
    policy:
      - allow:
          or:
            - domain: { is: example.com }
            - groups: { has: admins }
        deny:
          and:
            - http_path: { starts_with: /admin }
            - not: [ { groups: { has: admins } } ]
  - from: https://office.example.com
    to: http://127.0.0.1:1
    policy:
      - allow:
          and:
            - source_ip: { in: [10.0.0.0/8] }
";

#[test]
fn check_accepts_a_good_config_and_prints_positioned_errors_for_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), POLICY);
    let out = bin()
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let bad = write(dir.path(), "insecure_server: true\nroutes:\n  - from: https://a\n    to: http://b\n    timeout: forever\n    allowed_grups: [x]\n");
    let out = bin()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "{}:6:5: unknown field `allowed_grups`",
            bad.display()
        )),
        "{text}"
    );
}

#[test]
fn check_prints_the_servers_start_warnings_after_ok_and_quiet_leaves_only_errors() {
    let dir = tempfile::tempdir().unwrap();
    // No signing key (generated), an upstream whose certificate is not checked, and an
    // ACME host that gets no order (an IP address): what the server would warn about.
    let cfg = write(
        dir.path(),
        "autocert: true\nautocert_ca: https://127.0.0.1:14000/dir\nroutes:\n  - from: https://127.0.0.5\n    to: https://127.0.0.1:1\n    tls_skip_verify: true\n    allow_public_unauthenticated_access: true\n",
    );
    let run = |args: &[&str]| {
        let out = bin().args(args).arg("--config").arg(&cfg).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&["check"]);
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].ends_with(": ok (1 routes)"), "{out}");
    for says in ["no signing_key", "tls_skip_verify", "127.0.0.5"] {
        assert!(
            lines[1..]
                .iter()
                .any(|l| l.starts_with("warning: ") && l.contains(says)),
            "no warning about {says}: {out}"
        );
    }
    let (code, out) = run(&["check", "--quiet"]);
    assert_eq!((code, out.as_str()), (Some(0), ""));
    // Errors are printed with --quiet too.
    std::fs::write(&cfg, "routes: []\nbogus: 1\n").unwrap();
    let (code, out) = run(&["check", "--quiet"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("unknown field `bogus`"), "{out}");
}

fn explain(cfg: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = bin()
        .args(["explain", "--config"])
        .arg(cfg)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn explain_prints_the_decision_first_and_exits_0_2_or_1() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), POLICY);
    let (code, out) = explain(
        &cfg,
        &[
            "--url",
            "https://app.example.com/x",
            "--email",
            "Bob@Example.com",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("allow"), "{out}");
    assert!(
        out.contains(&format!("{}:6:9", cfg.display())),
        "the deciding rule's position: {out}"
    );
    let (code, out) = explain(
        &cfg,
        &[
            "--url",
            "https://app.example.com/admin/x",
            "--email",
            "bob@example.com",
        ],
    );
    assert_eq!(
        (code, out.split_whitespace().next()),
        (Some(2), Some("deny")),
        "{out}"
    );
    let (code, _) = explain(
        &cfg,
        &[
            "--url",
            "https://app.example.com/admin/x",
            "--email",
            "bob@example.com",
            "--groups",
            "staff,admins",
        ],
    );
    assert_eq!(code, Some(0));
    let (code, out) = explain(&cfg, &["--url", "https://app.example.com/x"]);
    assert_eq!(code, Some(2));
    assert!(out.contains("sign in"), "{out}");
    let (code, _) = explain(
        &cfg,
        &[
            "--url",
            "https://app.example.com/x",
            "--email",
            "bob@example.com",
            "--unverified",
        ],
    );
    assert_eq!(code, Some(2));
    let (code, _) = explain(
        &cfg,
        &[
            "--url",
            "https://office.example.com/",
            "--email",
            "x@y.z",
            "--ip",
            "10.1.2.3",
        ],
    );
    assert_eq!(code, Some(0));
    let (code, _) = explain(
        &cfg,
        &[
            "--url",
            "https://office.example.com/",
            "--email",
            "x@y.z",
            "--ip",
            "192.0.2.1",
        ],
    );
    assert_eq!(code, Some(2));
    let (code, _) = explain(
        &cfg,
        &[
            "--url",
            "https://app.example.com/x",
            "--email",
            "eve@evil.test@example.com",
        ],
    );
    assert_eq!(code, Some(1));
    let (code, _) = explain(
        &cfg,
        &[
            "--url",
            "https://app.example.com/a%2fb",
            "--email",
            "bob@example.com",
        ],
    );
    assert_eq!(code, Some(1));
    let (code, out) = explain(
        &cfg,
        &[
            "--url",
            "https://nothing.example.com/",
            "--email",
            "bob@example.com",
        ],
    );
    assert_eq!(code, Some(2));
    assert!(out.contains("404"), "{out}");
}

/// Runs `openssl` (the README's recipes); panics if it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian's openssl package) runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn signing_keys_made_by_the_readmes_commands_are_taken_and_other_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The README's recipe (SEC1), and the same key as PKCS#8.
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.pem",
        ],
    );
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "sec1.pem",
            "-out",
            "pkcs8.pem",
        ],
    );
    // What a newcomer might have instead.
    openssl(d, &["genrsa", "-out", "rsa.pem", "2048"]);
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "secp384r1",
            "-genkey",
            "-noout",
            "-out",
            "p384.pem",
        ],
    );
    openssl(
        d,
        &["genpkey", "-algorithm", "ed25519", "-out", "ed25519.pem"],
    );
    openssl(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-in",
            "sec1.pem",
            "-passout",
            "pass:x",
            "-out",
            "encrypted.pem",
        ],
    );
    openssl(
        d,
        &["ec", "-in", "sec1.pem", "-pubout", "-out", "public.pem"],
    );
    let check = |key: &str| {
        let cfg = write(
            d,
            &format!("insecure_server: true\nsigning_key_file: {key}\nroutes:\n  - from: http://a.test\n    to: http://127.0.0.1:1\n    allow_public_unauthenticated_access: true\n"),
        );
        let out = bin()
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    for good in ["sec1.pem", "pkcs8.pem"] {
        let (code, out) = check(good);
        assert_eq!(code, Some(0), "{good}: {out}");
    }
    for (bad, says) in [
        ("rsa.pem", "an RSA key"),
        ("p384.pem", "an EC P-384 key"),
        ("ed25519.pem", "an Ed25519 key"),
        ("encrypted.pem", "encrypted"),
        ("public.pem", "a public key"),
    ] {
        let (code, out) = check(bad);
        assert_eq!(code, Some(1), "{bad}: {out}");
        let cfg = d.join("config.yaml");
        let want = format!("{}:2:19: signing_key_file `{bad}`: ", cfg.display());
        assert!(
            out.contains(&want) && out.contains(says),
            "{bad}: wanted `{want}…{says}`, got {out}"
        );
    }
}

#[test]
fn secret_prints_32_random_bytes_in_base64() {
    use base64::Engine;
    let a = bin().arg("secret").output().unwrap();
    let b = bin().arg("secret").output().unwrap();
    let a = String::from_utf8(a.stdout).unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(a.trim())
        .unwrap();
    assert_eq!(key.len(), 32);
    assert_ne!(a, String::from_utf8(b.stdout).unwrap());
}

#[test]
fn a_bad_config_at_start_exits_1_with_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "insecure_server: true\nroutes:\n  - from: https://a\n    to: gopher://b\n",
    );
    let out = bin().arg("--config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{}:4:9:", cfg.display())));
}

#[test]
fn sigterm_drains_and_exits_0_and_health_probes_readyz() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "address: 127.0.0.1:0\nmetrics_address: 127.0.0.1:0\ninsecure_server: true\nroutes:\n  - from: http://a\n    to: http://127.0.0.1:1\n    allow_public_unauthenticated_access: true\n",
    );
    let server = Running::start(&cfg);
    let admin = server.addr("admin listener");
    server.addr("portcullis listening");
    // `health --config` reads the admin address from a config: one that names the port the
    // server chose.
    let probe = dir.path().join("probe.yaml");
    std::fs::write(
        &probe,
        std::fs::read_to_string(&cfg).unwrap().replace(
            "metrics_address: 127.0.0.1:0",
            &format!("metrics_address: {admin}"),
        ),
    )
    .unwrap();
    let health = bin()
        .args(["health", "--config"])
        .arg(&probe)
        .status()
        .unwrap();
    assert_eq!(health.code(), Some(0));
    let url = format!("http://{admin}/nothing");
    assert_eq!(
        bin()
            .args(["health", "--url", &url])
            .status()
            .unwrap()
            .code(),
        Some(1)
    );
    assert_eq!(server.term(), Some(0));
    let dead = format!("http://{admin}/readyz");
    assert_eq!(
        bin()
            .args(["health", "--url", &dead])
            .status()
            .unwrap()
            .code(),
        Some(1)
    );
}

/// Status code of `GET /` with `Host: host` (plain HTTP, std only).
fn status(port: u16, host: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.get(9..12)?.parse().ok()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_running_proxy_picks_up_config_edits_however_the_file_is_replaced_and_keeps_the_last_good_one(
) {
    let dir = tempfile::tempdir().unwrap();
    let route = |h: &str| {
        format!("  - from: http://{h}\n    to: http://127.0.0.1:1\n    allow_public_unauthenticated_access: true\n")
    };
    let head = "address: 127.0.0.1:0\ninsecure_server: true\nroutes:\n";
    // The config path is a symlink, as a Kubernetes ConfigMap mounts it.
    let v1 = dir.path().join("v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("config.yaml"), format!("{head}{}", route("a.test"))).unwrap();
    let cfg = dir.path().join("config.yaml");
    std::os::unix::fs::symlink(v1.join("config.yaml"), &cfg).unwrap();
    let server = Running::start(&cfg);
    let port = server.addr("portcullis listening").port();
    wait_for("start", || status(port, "a.test") == Some(502));
    assert_eq!(status(port, "b.test"), Some(404));

    // 1. truncate-and-write in place.
    std::fs::write(
        v1.join("config.yaml"),
        format!("{head}{}{}", route("a.test"), route("b.test")),
    )
    .unwrap();
    wait_for("in-place edit", || status(port, "b.test") == Some(502));
    // 2. a broken edit: refused with its position in the log, the last good config keeps
    // serving.
    std::fs::write(
        v1.join("config.yaml"),
        format!("{head}  - from: http://c.test\n    to: gopher://x\n"),
    )
    .unwrap();
    let refused = server.wait_log("the refused reload", |l| {
        l.contains("config reload refused")
    });
    assert!(
        refused.contains(&format!("{}:5:9: to: `gopher://x`", cfg.display())),
        "{refused}"
    );
    assert_eq!(status(port, "b.test"), Some(502));
    assert_eq!(status(port, "c.test"), Some(404));
    // 3. rename over (what most editors do).
    let reloads = server.count(|l| l.contains("config reloaded"));
    let tmp = v1.join(".config.yaml.swp");
    std::fs::write(&tmp, format!("{head}{}", route("c.test"))).unwrap();
    std::fs::rename(&tmp, v1.join("config.yaml")).unwrap();
    wait_for("rename-over", || status(port, "c.test") == Some(502));
    assert_eq!(status(port, "b.test"), Some(404));
    assert_eq!(server.count(|l| l.contains("config reloaded")), reloads + 1);
    // 4. symlink swap to another directory.
    let v2 = dir.path().join("v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("config.yaml"), format!("{head}{}", route("d.test"))).unwrap();
    let link_tmp = dir.path().join("config.yaml.new");
    std::os::unix::fs::symlink(v2.join("config.yaml"), &link_tmp).unwrap();
    std::fs::rename(&link_tmp, &cfg).unwrap();
    wait_for("symlink swap", || status(port, "d.test") == Some(502));
    assert_eq!(status(port, "c.test"), Some(404));
    assert_eq!(server.term(), Some(0));
}

#[test]
fn explain_diff_lists_each_decision_that_changes_and_exits_0_2_or_1() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.yaml");
    let new = dir.path().join("new.yaml");
    std::fs::write(&old, POLICY).unwrap();
    let diff = |a: &std::path::Path, b: &std::path::Path| {
        let out = bin()
            .args(["explain", "--diff"])
            .arg(a)
            .arg(b)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The same config: nothing changes.
    let (code, out, _) = diff(&old, &old);
    assert_eq!((code, out.as_str()), (Some(0), ""));
    // Admins lose their way into /admin: exactly those decisions change, one line each.
    std::fs::write(
        &new,
        POLICY.replace(
            "- not: [ { groups: { has: admins } } ]",
            "- authenticated_user: true",
        ),
    )
    .unwrap();
    let (code, out, err) = diff(&old, &new);
    assert_eq!(code, Some(2), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(l.contains("allow → deny"), "{l}");
        assert!(
            l.contains("/admin") && l.contains("member@probe.invalid"),
            "{l}"
        );
    }
    // Bad input: exit 1 with the error.
    std::fs::write(&new, "routes: [oops\n").unwrap();
    let (code, _, err) = diff(&old, &new);
    assert_eq!(code, Some(1));
    assert!(err.contains("new.yaml:"), "{err}");
}

const GRANTS: &str = r#"insecure_server: true
routes:
  - from: https://claw.example.com
    to:
      - when: { groups: { has: team-a } }
        to: http://gateway-a:18789
      - to: http://gateway-b:18789
    allow_any_authenticated_user: true
    grants:
      - when: { groups: { has: openclaw-admins } }
        set_request_headers: { X-OpenClaw-Scopes: operator.admin }
      - set_request_headers: { X-OpenClaw-Scopes: operator.read }
"#;

#[test]
fn explain_names_the_upstream_and_the_grant_and_diff_shows_a_changed_grant() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), GRANTS);
    let url = ["--url", "https://claw.example.com/"];
    let (code, out) = explain(
        &cfg,
        &[
            url[0],
            url[1],
            "--email",
            "a@example.com",
            "--groups",
            "team-a,openclaw-admins",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("upstream: http://gateway-a:18789"), "{out}");
    assert!(
        out.contains(&format!(
            "grant: {}:10:9 sets x-openclaw-scopes: operator.admin",
            cfg.display()
        )),
        "{out}"
    );
    let (_, out) = explain(&cfg, &[url[0], url[1], "--email", "b@example.com"]);
    assert!(out.contains("upstream: http://gateway-b:18789"), "{out}");
    assert!(
        out.contains("sets x-openclaw-scopes: operator.read"),
        "{out}"
    );
    // Anonymous: no upstream, no grant.
    let (code, out) = explain(&cfg, &url);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        !out.contains("upstream:") && !out.contains("grant:"),
        "{out}"
    );

    // The admins' group renamed: admins would be readers. Access is unchanged, the grant is
    // not, and --diff says so.
    let new = dir.path().join("new.yaml");
    std::fs::write(
        &new,
        GRANTS.replace("has: openclaw-admins", "has: gateway-admins"),
    )
    .unwrap();
    let out = bin()
        .args(["explain", "--diff"])
        .arg(&cfg)
        .arg(&new)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.lines().any(|l| l.contains("allow → allow")
            && l.contains("operator.admin")
            && l.contains("operator.read")),
        "{text}"
    );

    // Grants reordered: only a member of both groups is affected, and --diff finds them; an
    // email matcher widened with `ends_with` too.
    let two = |first: &str, second: &str, domain: &str| {
        format!(
            "insecure_server: true\nroutes:\n  - from: https://claw.example.com\n    to: http://gw:1\n    allow_any_authenticated_user: true\n    grants:\n\
             \x20     - when: {{ groups: {{ has: {first} }} }}\n        set_request_headers: {{ X-OpenClaw-Scopes: {first} }}\n\
             \x20     - when: {{ groups: {{ has: {second} }} }}\n        set_request_headers: {{ X-OpenClaw-Scopes: {second} }}\n\
             \x20     - when: {{ email: {{ ends_with: '{domain}' }} }}\n        set_request_headers: {{ X-OpenClaw-Scopes: by-email }}\n\
             \x20     - set_request_headers: {{ X-OpenClaw-Scopes: none }}\n"
        )
    };
    let (old, new) = (dir.path().join("o.yaml"), dir.path().join("n.yaml"));
    for (a, b, what) in [
        (
            two("readers", "admins", "@x.corp.test"),
            two("admins", "readers", "@x.corp.test"),
            "in admins, readers",
        ),
        (
            two("readers", "admins", "@x.corp.test"),
            two("readers", "admins", ".corp.test"),
            "corp.test",
        ),
    ] {
        std::fs::write(&old, a).unwrap();
        std::fs::write(&new, b).unwrap();
        let out = bin()
            .args(["explain", "--diff"])
            .arg(&old)
            .arg(&new)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{what}: {text}");
        assert!(text.contains(what), "{what}: {text}");
    }
}

const TCP: &str = r#"insecure_server: true
routes:
  - from: tcp+https://ssh.example.com:22
    to: tcp://gateway:2222
    allowed_groups: [admins]
  - from: https://ssh.example.com
    to: http://gateway:18789
    allow_any_authenticated_user: true
tests:
  - name: only admins reach ssh
    url: tcp+https://ssh.example.com:22
    email: bob@example.com
    expect: deny
"#;

/// TCP routes are decided, tested and compared like the others: `explain --url
/// tcp+https://host:port`, `tests:` with such URLs, and `explain --diff` probing them.
#[test]
fn explain_tests_and_diff_decide_tcp_routes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(dir.path(), TCP);
    let (code, out) = explain(
        &cfg,
        &[
            "--url",
            "tcp+https://ssh.example.com:22",
            "--email",
            "a@example.com",
            "--groups",
            "admins",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.starts_with("allow") && out.contains("tcp+https://ssh.example.com:22"),
        "{out}"
    );
    let (code, out) = explain(
        &cfg,
        &[
            "--url",
            "tcp+https://ssh.example.com:22",
            "--email",
            "bob@example.com",
        ],
    );
    assert_eq!(code, Some(2), "{out}");
    // The HTTP route on the same host does not decide for the TCP one, nor the other way.
    let (code, out) = explain(
        &cfg,
        &[
            "--url",
            "https://ssh.example.com:22/",
            "--email",
            "bob@example.com",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = explain(
        &cfg,
        &[
            "--url",
            "tcp+https://ssh.example.com:2222",
            "--email",
            "a@example.com",
            "--groups",
            "admins",
        ],
    );
    assert!(code == Some(2) && out.contains("no route"), "{out}");
    // A path on a TCP URL is refused (exit 1).
    let (code, _) = explain(&cfg, &["--url", "tcp+https://ssh.example.com:22/x"]);
    assert_eq!(code, Some(1));

    // The TCP route made public: its own test fails check, and --diff lists the change.
    let open = dir.path().join("open.yaml");
    std::fs::write(
        &open,
        TCP.replace(
            "allowed_groups: [admins]",
            "allow_public_unauthenticated_access: true",
        ),
    )
    .unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&open)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("only admins reach ssh") && text.contains("expected deny, got allow"),
        "{text}"
    );
    let out = bin()
        .args(["explain", "--diff"])
        .arg(&cfg)
        .arg(&open)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.lines().any(
            |l| l.starts_with("CONNECT tcp+https://ssh.example.com:22 as anonymous")
                && l.contains("→ allow")
        ),
        "{text}"
    );
    assert!(
        text.lines().all(|l| l.contains("tcp+https://")),
        "only the TCP route changed: {text}"
    );
}

/// A TCP route to an upstream an HTTP route serves would let its users speak HTTP to it as
/// Portcullis, identity headers included: refused.
#[test]
fn a_tcp_route_into_an_http_routes_upstream_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for to in ["tcp://gateway:18789", "tcp://GATEWAY.:18789"] {
        let cfg = write(dir.path(), &TCP.replace("tcp://gateway:2222", to));
        let out = bin()
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{to}: {text}");
        assert!(text.contains("config.yaml:3:5: route `tcp+https://ssh.example.com:22` tunnels to gateway:18789, which route `https://ssh.example.com` (line 6) forwards HTTP to"), "{text}");
    }
    // http's default port too.
    let cfg = write(
        dir.path(),
        &TCP.replace("tcp://gateway:2222", "tcp://gateway:80")
            .replace("http://gateway:18789", "http://gateway"),
    );
    let out = bin()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
