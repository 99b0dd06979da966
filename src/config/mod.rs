//! Configuration: YAML parsed once into typed, compiled values.
//!
//! `raw` mirrors the file, `env` applies `PORTCULLIS_*` overrides, `compile` validates and
//! builds everything a request needs. Errors always say `file:line:col: message`.

pub mod compile;
pub mod duration;
pub mod env;
pub mod error;
pub mod keys;
pub mod node;
pub mod raw;
pub mod settings;

pub use compile::Compiled;
pub use env::{Env, MapEnv, ProcessEnv};
pub use error::{ConfigError, ConfigErrors};
pub use settings::{AutocertSettings, LogFormat, Settings};

use std::path::Path;

/// Largest config file accepted (a YAML bomb or a wrong path should not eat memory).
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Reads, parses and compiles the config at `path`.
pub fn load(path: &Path, env: &dyn Env) -> Result<Compiled, ConfigErrors> {
    let source = path.display().to_string();
    let text = read_limited(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            &source,
            error::Pos::default(),
            format!("cannot read the config file: {e}"),
        )])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(&text, &source, base, env)
}

fn read_limited(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut s = String::new();
    f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut s)?;
    if s.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::other("larger than 4 MiB"));
    }
    Ok(s)
}

/// The policy of the first route of `yaml` (a whole config), for unit tests of what decides.
#[cfg(test)]
pub(crate) fn first_policy(yaml: &str) -> crate::policy::Policy {
    match load_str(yaml, "t.yaml", Path::new("."), &MapEnv::default()) {
        Ok(mut c) => c.routes.remove(0).policy,
        Err(e) => panic!("test config refused: {e}"),
    }
}

/// Parses and compiles config text; `source` names it in errors, relative file paths in it
/// are taken from `base`.
pub fn load_str(
    text: &str,
    source: &str,
    base: &Path,
    env: &dyn Env,
) -> Result<Compiled, ConfigErrors> {
    let mut raw: raw::RawConfig = if text.trim().is_empty() {
        raw::RawConfig::default()
    } else {
        // Default options: duplicate keys are errors, and a budget bounds aliases and nesting.
        serde_saphyr::from_str(text)
            .map_err(|e| ConfigErrors(vec![error::from_yaml(source, &e)]))?
    };
    let mut errs = Vec::new();
    let env_keys = env::apply(&mut raw, env, &mut errs);
    if !errs.is_empty() {
        return Err(ConfigErrors(errs));
    }
    compile::compile(raw, source, base, env_keys)
}
