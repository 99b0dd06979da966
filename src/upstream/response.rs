//! The response body, read from its connection as the client asks for it (the connection goes
//! back to the pool when it ended cleanly), and the route's idle timeout on it.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use crate::http::h1::{Chunk, Chunked};
use crate::http::BoxError;

use super::exchange::*;
use super::pool::*;

pub(super) enum BodyState {
    Length(u64),
    Chunked(Chunked),
    Close,
}

/// A response body read from its connection as the downstream connection asks for it; the
/// connection goes back to the pool when it has ended cleanly.
pub struct RawBody {
    pub(super) ex: Option<Exchange>,
    pub(super) state: BodyState,
    pub(super) keep_alive: bool,
    /// How long the connection may wait in the pool (`reuse_for`).
    pub(super) reuse_for: Duration,
    pub(super) pool: std::sync::Weak<Pool>,
    pub(super) key: Arc<str>,
}

impl RawBody {
    /// The body has ended: the connection goes back to the pool if the request went out
    /// whole, the response ended where its framing said, and nothing else arrived.
    pub(super) fn finish(&mut self) {
        let Some(ex) = self.ex.take() else {
            return;
        };
        let clean = match &self.state {
            BodyState::Length(n) => *n == 0,
            BodyState::Chunked(c) => c.is_end(),
            BodyState::Close => false,
        };
        if self.keep_alive && clean && ex.sent() && ex.conn.buf.is_empty() {
            if let Some(pool) = self.pool.upgrade() {
                let mut conn = ex.conn;
                if conn.head.capacity() > 16 * 1024 {
                    // An unusually large head: not kept for the life of the connection.
                    conn.head = Vec::new();
                }
                pool.put(self.key.clone(), conn, self.reuse_for);
            }
        }
    }

    pub(super) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BoxError>>> {
        let Some(ex) = self.ex.as_mut() else {
            return Poll::Ready(None);
        };
        if let Err(e) = ex.poll_write(cx) {
            return Poll::Ready(Some(Err(e.into())));
        }
        loop {
            let buf = &mut ex.conn.buf;
            match &mut self.state {
                BodyState::Length(0) => return Poll::Ready(None),
                BodyState::Length(n) if !buf.is_empty() => {
                    let take = buf.len().min(usize::try_from(*n).unwrap_or(usize::MAX));
                    *n -= take as u64;
                    return Poll::Ready(Some(Ok(buf.split_to(take).freeze())));
                }
                BodyState::Chunked(c) => match c.decode(buf) {
                    Ok(Chunk::Data(b)) => return Poll::Ready(Some(Ok(b))),
                    Ok(Chunk::End) => return Poll::Ready(None),
                    Ok(Chunk::NeedMore) => {}
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                },
                BodyState::Close if !buf.is_empty() => {
                    return Poll::Ready(Some(Ok(buf.split().freeze())));
                }
                _ => {}
            }
            match ready!(ex.conn.poll_fill(cx)) {
                Ok(0) if matches!(self.state, BodyState::Close) => return Poll::Ready(None),
                Ok(0) => {
                    return Poll::Ready(Some(Err(
                        "the upstream closed the connection mid-body".into()
                    )))
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }
}

impl HttpBody for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = this.poll_data(cx);
        match &r {
            // A reader that knows the length stops at the last byte without asking for the
            // end: the connection is free as soon as the body has ended either way.
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if matches!(this.state, BodyState::Length(0)) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.ex = None,
            _ => {}
        }
        r.map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.ex.is_none() || matches!(self.state, BodyState::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// The upstream response body: read by the request itself, or hyper's for an upgrade.
// Nearly every response is `Raw`: boxing it would be an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum UpResponseBody {
    Raw(RawBody),
    Upgrade(Incoming),
}

impl HttpBody for UpResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpResponseBody::Raw(b) => Pin::new(b).poll_frame(cx),
            UpResponseBody::Upgrade(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpResponseBody::Raw(b) => b.is_end_stream(),
            UpResponseBody::Upgrade(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpResponseBody::Raw(b) => b.size_hint(),
            UpResponseBody::Upgrade(b) => b.size_hint(),
        }
    }
}

/// A response body that ends with an error when the upstream sends nothing for `idle`
/// (the route's `idle_timeout`), so a stalled stream does not hold a connection forever.
pub struct IdleBody<B> {
    pub(super) inner: B,
    pub(super) idle: Duration,
    pub(super) sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleBody {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl<B> HttpBody for IdleBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<crate::http::BoxError>,
{
    type Data = Bytes;
    type Error = crate::http::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(f) => {
                let deadline = tokio::time::Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err("upstream response idle past idle_timeout".into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
