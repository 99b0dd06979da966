//! The upstream client: pooled keep-alive HTTP/1.1 connections (plain or TLS) that each
//! request drives itself, round-robin over a route's `to` URLs with fail-over on refused
//! connections, and the route's deadline. It knows nothing of routes or policy: `route.rs`
//! hands it a [`Destination`], and it sends only a [`Permitted`](crate::policy::eval::Permitted)
//! request with headers the proxy made ([`Fields`]).

pub mod address;
pub mod client;
mod conn;
mod exchange;
mod pool;
pub mod request;
pub mod response;
pub mod tls;

pub use address::Upstream;
pub use client::{send, Destination, Error, Fields, UpstreamClient};
pub use request::UpBody;
pub use response::{IdleBody, UpResponseBody};
pub use tls::{NoVerify, UpstreamTls};

#[cfg(test)]
mod tests;
