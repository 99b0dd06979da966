//! Reloading under load: requests keep succeeding while the config is rewritten 100 times
//! (valid and invalid edits mixed, each way of replacing a file), and the routes served are
//! always those of the last valid file.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_rewrites_under_load_fail_no_request_and_serve_the_last_valid_routes() {
    let echo = Echo::start("a").await;
    let yaml = |extra: &str| {
        format!(
            "address: 127.0.0.1:0\ninsecure_server: true\nroutes:\n\
             \x20 - from: http://steady.test\n    to: {e}\n    allow_public_unauthenticated_access: true\n\
             \x20 - from: http://{extra}.test\n    to: {e}\n    allow_public_unauthenticated_access: true\n",
            e = echo.url()
        )
    };
    let p = Proxy::start(&yaml("v0")).await;
    let addr = p.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if get(addr, "steady.test", "/x", &[]).await.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let dir = p.dir.path().to_path_buf();
    let mut last_valid = "v0".to_string();
    for i in 1..=100 {
        let valid = i % 3 != 0;
        let text = if valid {
            yaml(&format!("v{i}"))
        } else {
            format!(
                "{}\n  - from: http://broken{i}.test\n    to: gopher://x\n",
                yaml(&format!("v{i}"))
            )
        };
        match i % 3 {
            // truncate and write in place
            0 => std::fs::write(&p.config, &text).unwrap(),
            // rename over
            1 => {
                let tmp = dir.join(format!(".tmp{i}"));
                std::fs::write(&tmp, &text).unwrap();
                std::fs::rename(&tmp, &p.config).unwrap();
            }
            // symlink swap
            _ => {
                let target = dir.join(format!("config-{i}.yaml"));
                std::fs::write(&target, &text).unwrap();
                let link = dir.join(format!(".link{i}"));
                std::os::unix::fs::symlink(&target, &link).unwrap();
                std::fs::rename(&link, &p.config).unwrap();
            }
        }
        let took = portcullis::server::reload::reload(&p.handle, &p.config);
        assert_eq!(took, valid, "edit {i}");
        if valid {
            last_valid = format!("v{i}");
        }
        if i % 10 == 0 {
            assert_eq!(
                get(addr, &format!("{last_valid}.test"), "/", &[])
                    .await
                    .status,
                200,
                "after edit {i}"
            );
            assert_eq!(
                get(addr, &format!("v{i}.test"), "/", &[]).await.status,
                if valid { 200 } else { 404 }
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 100, "the load did not run");
    assert_eq!(
        get(addr, &format!("{last_valid}.test"), "/", &[])
            .await
            .status,
        200
    );
    assert_eq!(
        get(addr, "v99.test", "/", &[]).await.status,
        404,
        "a refused edit's route is served"
    );
}

#[tokio::test]
async fn a_reload_whose_policy_tests_fail_is_refused_and_counted_and_the_old_config_serves() {
    let echo = Echo::start("a").await;
    let yaml = |allow: &str| {
        format!(
            "address: 127.0.0.1:0\ninsecure_server: true\nroutes:\n\
             \x20 - from: http://app.test\n    to: {e}\n    {allow}\n\
             tests:\n  - name: the public page stays public\n    url: http://app.test/\n    expect: allow\n",
            e = echo.url()
        )
    };
    let p = Proxy::start(&yaml("allow_public_unauthenticated_access: true")).await;
    assert_eq!(get(p.addr(), "app.test", "/", &[]).await.status, 200);
    // An edit that would lock everyone out of the public page: its own test refuses it.
    std::fs::write(&p.config, yaml("allowed_domains: [example.com]")).unwrap();
    assert!(!portcullis::server::reload::reload(&p.handle, &p.config));
    let m = p.handle.shared.metrics.render();
    assert_eq!(
        metric(&m, "portcullis_config_reload_failures_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(get(p.addr(), "app.test", "/", &[]).await.status, 200);
}
