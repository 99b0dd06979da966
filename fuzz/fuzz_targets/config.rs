//! Any bytes as a config file: an error or a config, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = portcullis::config::load_str(
            text,
            "fuzz.yaml",
            std::path::Path::new("/nonexistent"),
            &portcullis::config::MapEnv::default(),
        );
    }
});
