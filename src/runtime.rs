//! The running configuration: routes, policies, certificates, built completely from one
//! config file. Requests take one snapshot (`Arc<Runtime>`) and use it throughout; a reload
//! builds a whole new `Runtime` first and swaps it in only if everything succeeded.

use std::path::Path;
use std::sync::Arc;

use crate::auth::Auth;
use crate::config::{self, ConfigError, ConfigErrors, Env, Settings};

use crate::route::RouteTable;
use crate::tls::CertResolver;

pub struct Runtime {
    pub settings: Settings,
    pub routes: RouteTable,
    /// Certificates by SNI; `None` with `insecure_server`.
    pub certs: Option<Arc<CertResolver>>,
    /// Load-time warnings, logged once by whoever installs this runtime.
    pub warnings: Vec<String>,
    /// Sign-in: cookie key, IdP, assertion signer.
    pub auth: Auth,
    /// Files the config names; the watcher reloads when one changes.
    pub files: Vec<std::path::PathBuf>,
    /// With `autocert`: the hosts ACME orders certificates for, and the TLS client for the
    /// ACME server.
    pub acme: Option<(Vec<String>, Arc<rustls::ClientConfig>)>,
    /// `Strict-Transport-Security` for every response, made once from `hsts_max_age`.
    pub hsts: Option<http::HeaderValue>,
}

impl Runtime {
    /// Builds everything from a compiled config, carrying over from `prev` what must
    /// survive a reload (IdP discovery, a generated signing key).
    pub fn build(
        compiled: config::Compiled,
        source: &str,
        prev: Option<&Runtime>,
    ) -> Result<Runtime, ConfigErrors> {
        let config::Compiled {
            settings,
            routes,
            mut warnings,
            files,
            tests,
        } = compiled;
        let routes = RouteTable::new(routes);
        // The config's own tests: a config that fails them is refused like a syntax error.
        let failed = crate::explain::run_tests(&routes, &tests, source);
        if !failed.is_empty() {
            return Err(ConfigErrors(
                failed
                    .into_iter()
                    .map(|f| ConfigError::new(source, f.pos, f.message))
                    .collect(),
            ));
        }
        let certs = if settings.insecure_server {
            None
        } else {
            let (resolver, w) =
                crate::tls::resolver(&settings, &routes.hosts()).map_err(|(entry, e)| {
                    let pos = entry
                        .and_then(|i| settings.certificates.get(i))
                        .map(|c| c.pos)
                        .unwrap_or_default();
                    ConfigErrors(vec![ConfigError::new(
                        source,
                        pos,
                        format!("certificates: {e}"),
                    )])
                })?;
            warnings.extend(w);
            Some(Arc::new(resolver))
        };
        let acme = match (&settings.autocert, &certs) {
            (Some(a), Some(certs)) => {
                let client = crate::tls::acme::client_config(a).map_err(|e| {
                    ConfigErrors(vec![ConfigError::new(
                        source,
                        crate::config::error::Pos::default(),
                        e,
                    )])
                })?;
                let hosts = routes.hosts();
                let uncovered: Vec<String> = certs.uncovered(&hosts).into_iter().cloned().collect();
                let (ok, w) = crate::tls::acme::eligible(&uncovered);
                warnings.extend(w);
                if ok.is_empty() {
                    warnings
                        .push("autocert is on but no route host needs an ACME certificate".into());
                }
                Some((ok, client))
            }
            _ => None,
        };
        let (auth, w) = Auth::build(&settings, prev.map(|p| &p.auth)).map_err(|e| {
            ConfigErrors(vec![ConfigError::new(
                source,
                crate::config::error::Pos::default(),
                e,
            )])
        })?;
        warnings.extend(w);
        if settings.idp.is_none() && routes.iter().any(|r| r.policy.wants_identity) {
            warnings.push("some routes need a signed-in user but no idp_provider_url is set: they answer 401 to everyone".into());
        }
        let hsts = settings
            .hsts_max_age
            .and_then(|a| http::HeaderValue::try_from(format!("max-age={}", a.as_secs())).ok());
        Ok(Runtime {
            settings,
            routes,
            certs,
            warnings,
            auth,
            hsts,
            files,
            acme,
        })
    }

    /// Starts or stops ACME orders to match this runtime.
    pub fn sync_acme(&self, acme: &crate::tls::acme::Acme) {
        match &self.acme {
            Some((hosts, client)) => acme.sync(
                self.settings.autocert.as_ref(),
                Some(client),
                hosts,
                self.settings.session_store.as_ref(),
            ),
            None => acme.stop(),
        }
    }

    /// Reads, validates and builds the config at `path`.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Runtime, ConfigErrors> {
        Runtime::reload(path, env, None)
    }

    /// Like [`load`](Self::load), reusing what can be reused from the running runtime.
    pub fn reload(
        path: &Path,
        env: &dyn Env,
        prev: Option<&Runtime>,
    ) -> Result<Runtime, ConfigErrors> {
        let compiled = config::load(path, env)?;
        Runtime::build(compiled, &path.display().to_string(), prev)
    }
}
