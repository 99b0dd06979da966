//! Any bytes as a config file: a config, or errors that each say where (`fuzz.yaml:L:C: …`,
//! never a panic and never an error without its place).
#![no_main]
use libfuzzer_sys::fuzz_target;

/// `fuzz.yaml:LINE:COL: message` with LINE and COL at least 1, or an environment variable's
/// error (none here: the environment is empty).
fn positioned(e: &str) -> bool {
    let Some(rest) = e.strip_prefix("fuzz.yaml:") else {
        return false;
    };
    let mut it = rest.splitn(3, ':');
    let num = |s: Option<&str>| {
        s.and_then(|s| s.parse::<u32>().ok())
            .is_some_and(|n| n >= 1)
    };
    num(it.next()) && num(it.next()) && it.next().is_some_and(|m| m.starts_with(' ') && m.len() > 1)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errs) = portcullis::config::load_str(
            text,
            "fuzz.yaml",
            std::path::Path::new("/nonexistent"),
            &portcullis::config::MapEnv::default(),
        ) {
            for e in &errs.0 {
                let e = e.to_string();
                assert!(positioned(&e), "an error without its place: {e:?}");
            }
        }
    }
});
