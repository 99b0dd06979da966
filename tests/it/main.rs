//! The integration tests, one binary (a 2-core machine links once): the real server on port 0
//! in front of test upstreams, the real binary for the command line, Pebble for ACME. Each
//! module is one area; `tests/support/` holds what they share.

#[path = "../support/mod.rs"]
mod support;

mod acme;
mod cli;
mod config;
mod grants;
mod policy;
mod proxy;
mod reload;
mod replicas;
mod security;
mod sessions;
mod tls;
mod tunnel;
mod upstream;
