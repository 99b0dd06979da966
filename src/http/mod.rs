//! HTTP facts with no Portcullis state: hop-by-hop and framing names, header-name folding,
//! Cookie-header splitting, request-target and path normalization, and the HTTP/1 codec for
//! upstreams.

pub mod cookie;
pub mod h1;
pub mod hop;
pub mod target;

/// The error of a body or a connection step, whatever made it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
