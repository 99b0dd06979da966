//! A connection to an upstream (plain or TLS) and what has been read from it but not used.

use bytes::BytesMut;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::io::poll_read_buf;

use crate::http::h1::{self};

/// How long making a connection (TCP and TLS) may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer room asked for before a read: it starts small (most responses are), and grows
/// while reads fill it (a large body then takes fewer reads), up to the most.
pub(super) const READ_ROOM: usize = 8 * 1024;
pub(super) const READ_ROOM_MAX: usize = 128 * 1024;

/// A connection to an upstream.
pub enum UpIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_write(cx, b),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection and what has been read from it but not used yet.
pub(super) struct UpConn {
    pub(super) io: UpIo,
    pub(super) buf: BytesMut,
    /// The request head being written (kept for the next request on this connection).
    pub(super) head: Vec<u8>,
    /// The room asked for before the next read.
    pub(super) room: usize,
    /// The route's deadline for the response head, kept with the connection: each request
    /// moves it later (`Sleep::reset` to a later instant does not touch the timer wheel),
    /// where a timer per request would be registered and removed again (docs/performance.md).
    /// While the connection waits in the pool it keeps the last request's waker until it is
    /// moved again or fires (one needless wake-up, at most the route's timeout later).
    pub(super) timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The names of the last response head read on it (see `h1::Names`).
    pub(super) names: h1::Names,
}

impl UpConn {
    /// Reads more into the buffer; `Ok(0)`: the upstream closed.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let spare = self.buf.capacity() - self.buf.len();
        if spare < self.room / 2 {
            self.buf.reserve(self.room);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let n = ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf))?;
        if n == spare {
            self.room = (self.room * 2).min(READ_ROOM_MAX);
        }
        Poll::Ready(Ok(n))
    }

    /// An idle connection is fit for a request when nothing has arrived on it: no bytes (the
    /// previous response ended where its framing said) and no end (the upstream closed it).
    pub(super) async fn fit(&mut self) -> bool {
        self.buf.is_empty()
            && std::future::poll_fn(|cx| Poll::Ready(self.poll_fill(cx).is_pending())).await
    }
}

/// An error and its sources, as one line for the log.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
