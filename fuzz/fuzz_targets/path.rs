//! Any request path: refused, or normalized to a fixed point that routing can trust. And any
//! `prefix_rewrite` of a normalized path: refused, or a path that is normalized itself and
//! starts with the rewrite target (so the upstream resolves it to no other path).
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::http::target::{normalize_path, normalize_path_fully, rewrite_prefix};

/// `prefix\nrewrite\npath`, each as the config and the request would give it.
fn rewrite(data: &str) {
    let mut parts = data.splitn(3, '\n');
    let (Some(prefix), Some(rw), Some(raw)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    // The config takes only canonical `prefix` and `prefix_rewrite` values.
    let canonical = |p: &str| normalize_path(p).is_ok_and(|n| n == p);
    let Ok(path) = normalize_path(raw) else {
        return;
    };
    if !canonical(prefix) || !canonical(rw) || !path.starts_with(prefix) {
        return;
    }
    if let Ok(out) = rewrite_prefix(prefix, rw, &path) {
        assert_eq!(
            normalize_path(&out).as_deref(),
            Ok(out.as_str()),
            "{prefix} {rw} {path}"
        );
        assert!(out.starts_with(rw), "{prefix} {rw} {path} -> {out}");
        assert!(!out.split('/').any(|s| s == "." || s == ".."), "{out}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    rewrite(raw);
    // The shortcut for paths that are already normal changes no outcome.
    assert_eq!(normalize_path(raw), normalize_path_fully(raw), "{raw:?}");
    if let Ok(p) = normalize_path(raw) {
        assert!(p.starts_with('/'));
        assert!(!p.contains("//"), "{p}");
        assert!(!p.split('/').any(|s| s == "." || s == ".."), "{p}");
        assert!(!p.contains('\\') && !p.contains('#'));
        let lower = p.to_ascii_lowercase();
        assert!(
            !lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%00"),
            "{p}"
        );
        assert_eq!(
            normalize_path(&p).as_deref(),
            Ok(p.as_str()),
            "not a fixed point"
        );
    }
});
