//! Portcullis: an identity-aware reverse proxy.
//!
//! The modules are layers, each importing only from those listed before it (no import cycle
//! between files); `docs/architecture.md` gives a line per file, and
//! `docs/request-lifecycle.md` the path of one request through them.
//!
//! The public surface is what the binary, the integration tests, the fuzz targets and the
//! benchmarks use: starting a server ([`server::start`], its [`server::Handle`]) on a
//! [`runtime::Runtime`] loaded from a config ([`config`]); the policy language and its
//! evaluator ([`policy`]); the session cookie ([`auth::session`]) and the assertion signer; the
//! HTTP facts the fuzz targets drive ([`http`]); the proxy's request headers
//! ([`proxy::headers`]); the upstream client's certificate-ignoring verifier for test clients
//! ([`upstream::NoVerify`]); and the command line ([`cli`]). The rest is `pub(crate)`.
#![forbid(unsafe_code)]

// Facts with no Portcullis state: the clock, per-core workers, Portcullis's own paths, HTTP.
pub mod clock;
pub mod http;
pub(crate) mod paths;
pub(crate) mod workers;
// Configuration leaves and typed settings, then the policy language.
pub mod config;
pub mod policy;
// The upstream client, then routes.
pub(crate) mod route;
// What the policy decides for a request described in words (explain, the config's tests).
pub mod explain;
pub mod upstream;
// Certificates and sign-in.
pub mod auth;
pub mod tls;
// The running config, counters, the request path, listeners, the TCP-route client, the
// command line.
pub mod cli;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod server;
pub(crate) mod tunnel_client;
