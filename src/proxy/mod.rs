//! The request pipeline: target → route → session → policy → forward.

pub mod decide;
pub mod error;
pub mod handle;
pub mod headers;
pub mod portal;
pub mod relay;
pub mod shadow;
pub mod sockets;
pub mod state;
pub mod tunnel;
pub mod websocket;

use bytes::Bytes;

pub use crate::http::BoxError;

/// Every response body Portcullis sends.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;
