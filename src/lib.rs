//! Portcullis: an identity-aware reverse proxy.
//!
//! The modules are layers, each importing only from those listed before it (no import cycle
//! between files); `docs/architecture.md` gives a line per file, and
//! `docs/request-lifecycle.md` the path of one request through them.
#![forbid(unsafe_code)]

// Facts with no Portcullis state: the clock, per-core workers, Portcullis's own paths, HTTP.
pub mod clock;
pub mod http;
pub mod paths;
pub mod workers;
// Configuration leaves and typed settings, then the policy language.
pub mod config;
pub mod policy;
// The upstream client, then routes.
pub mod route;
pub mod upstream;
// Certificates and sign-in.
pub mod auth;
pub mod tls;
// The running config, counters, the request path, listeners, the command line.
pub mod cli;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod server;
