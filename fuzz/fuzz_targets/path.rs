//! Any request path: refused, or normalized to a fixed point that routing can trust.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::proxy::target::{normalize_path, normalize_path_fully};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
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
