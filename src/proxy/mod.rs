//! The request pipeline: target → route → session → policy → forward.

pub mod error;
pub mod forward;
pub mod handle;
pub mod headers;
pub mod relay;
pub mod websocket;

use bytes::Bytes;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body Portcullis sends.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;
