//! Portcullis: an identity-aware reverse proxy.
//!
//! See `docs/request-lifecycle.md` for the path of one request through these modules.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;

pub mod config;
pub mod metrics;

pub mod policy;
pub mod proxy;
pub mod route;
pub mod runtime;
pub mod server;
pub mod tls;
