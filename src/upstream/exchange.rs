//! One request on one connection: the request head and body written (framed by
//! `http::h1`), the response head read.

use bytes::{Buf, Bytes, BytesMut};
use http::Response;
use http_body::Body as HttpBody;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tokio::io::AsyncWrite;

use crate::http::h1::{self, ReqFraming};

use super::conn::*;
use super::request::*;

/// What the request head is written from.
pub(super) struct Head<'a, F> {
    pub(super) method: &'a http::Method,
    pub(super) path_and_query: &'a str,
    pub(super) host: &'a http::HeaderValue,
    pub(super) headers: &'a F,
}

/// Why an exchange failed, and whether the request may go out again on another connection.
pub(super) struct ExchangeError {
    pub(super) msg: String,
    /// No byte of the request was written.
    pub(super) unsent: bool,
    /// The upstream closed the connection without sending a byte.
    pub(super) silent: bool,
    /// The route's deadline passed first.
    pub(super) timed_out: bool,
}

/// The request on its way out: the head, then the body as the client sends it, framed.
pub(super) struct Writer {
    /// How much of the head (the connection's `head`) has been written, of how much.
    pub(super) head_at: usize,
    pub(super) head_len: usize,
    /// Body bytes not written yet.
    pub(super) out: Bytes,
    pub(super) body: Option<UpBody>,
    pub(super) chunked: bool,
    /// With a `Content-Length`: body bytes still due.
    pub(super) left: u64,
    /// Written since the last flush.
    pub(super) unflushed: bool,
    pub(super) wrote: bool,
}

pub(super) enum WriteError {
    Io(io::Error),
    /// The client's body failed or did not match its length.
    Body(String),
}

impl Writer {
    pub(super) fn new(head_len: usize, body: UpBody, framing: ReqFraming) -> Writer {
        let (body, left) = match framing {
            ReqFraming::None => (None, 0),
            ReqFraming::Length(n) => ((n > 0).then_some(body), n),
            ReqFraming::Chunked => (Some(body), 0),
        };
        Writer {
            head_at: 0,
            head_len,
            out: Bytes::new(),
            body,
            chunked: framing == ReqFraming::Chunked,
            left,
            unflushed: false,
            wrote: false,
        }
    }

    /// The whole request has been written and flushed.
    pub(super) fn done(&self) -> bool {
        self.head_at == self.head_len
            && self.out.is_empty()
            && self.body.is_none()
            && !self.unflushed
    }

    /// Writes what it can; ready when the whole request is out.
    pub(super) fn poll(
        &mut self,
        io: &mut UpIo,
        head: &[u8],
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            if self.head_at < self.head_len {
                let rest = head.get(self.head_at..self.head_len).unwrap_or_default();
                let n = ready!(Pin::new(&mut *io).poll_write(cx, rest)).map_err(WriteError::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                self.head_at += n;
                self.wrote = true;
                self.unflushed = true;
                continue;
            }
            if !self.out.is_empty() {
                let n =
                    ready!(Pin::new(&mut *io).poll_write(cx, &self.out)).map_err(WriteError::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
                }
                self.out.advance(n);
                self.wrote = true;
                self.unflushed = true;
                continue;
            }
            if let Some(body) = &mut self.body {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        if data.is_empty() {
                            continue;
                        }
                        if self.chunked {
                            let mut out = BytesMut::with_capacity(data.len() + 20);
                            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                            out.extend_from_slice(&data);
                            out.extend_from_slice(b"\r\n");
                            self.out = out.freeze();
                        } else {
                            let n = data.len() as u64;
                            if n > self.left {
                                return Poll::Ready(Err(WriteError::Body(
                                    "the request body is longer than its length".into(),
                                )));
                            }
                            self.left -= n;
                            self.out = data;
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(WriteError::Body(error_chain(&e))))
                    }
                    Poll::Ready(None) => {
                        self.body = None;
                        if self.chunked {
                            self.out = Bytes::from_static(b"0\r\n\r\n");
                        } else if self.left != 0 {
                            return Poll::Ready(Err(WriteError::Body(
                                "the request body ended before its length".into(),
                            )));
                        }
                        continue;
                    }
                    Poll::Pending => {
                        if self.unflushed {
                            ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            if self.unflushed {
                ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                self.unflushed = false;
            }
            return Poll::Ready(Ok(()));
        }
    }
}

/// One request and its response on one connection.
pub(super) struct Exchange {
    pub(super) conn: UpConn,
    pub(super) writer: Writer,
    /// Why writing the request failed, if it did: then nothing more is written.
    pub(super) write_error: Option<String>,
}

impl Exchange {
    /// Moves the request on. A failed write leaves the response to be read; a failed client
    /// body is an error, and the exchange is dropped with it.
    pub(super) fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), String> {
        if self.write_error.is_some() || self.writer.done() {
            return Ok(());
        }
        match self.writer.poll(&mut self.conn.io, &self.conn.head, cx) {
            Poll::Ready(Err(WriteError::Body(e))) => Err(e),
            Poll::Ready(Err(WriteError::Io(e))) => {
                self.write_error = Some(e.to_string());
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The whole request went out.
    pub(super) fn sent(&self) -> bool {
        self.write_error.is_none() && self.writer.done()
    }
}

/// Writes the request and reads the response head (1xx interim responses skipped), by the
/// route's deadline if it has one.
pub(super) async fn exchange(
    mut conn: UpConn,
    writer: Writer,
    deadline: Option<Instant>,
) -> Result<(Response<()>, Exchange), ExchangeError> {
    if let Some(d) = deadline {
        match &mut conn.timer {
            Some(t) => t.as_mut().reset(d.into()),
            None => conn.timer = Some(Box::pin(tokio::time::sleep_until(d.into()))),
        }
    }
    let mut ex = Exchange {
        conn,
        writer,
        write_error: None,
    };
    let mut heard = false;
    let resp = std::future::poll_fn(|cx| {
        let fail = |msg: String, heard: bool, ex: &Exchange| ExchangeError {
            msg: match &ex.write_error {
                Some(w) => format!("{msg} (writing the request: {w})"),
                None => msg,
            },
            unsent: !ex.writer.wrote,
            silent: !heard,
            timed_out: false,
        };
        if let Err(e) = ex.poll_write(cx) {
            return Poll::Ready(Err(fail(e, heard, &ex)));
        }
        loop {
            if !ex.conn.buf.is_empty() {
                heard = true;
                match h1::parse_head(&mut ex.conn.buf, &mut ex.conn.names) {
                    Err(e) => return Poll::Ready(Err(fail(e.to_string(), heard, &ex))),
                    Ok(Some(r)) if r.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                        return Poll::Ready(Err(fail(
                            "the upstream switched protocols unasked".into(),
                            heard,
                            &ex,
                        )))
                    }
                    Ok(Some(r)) if r.status().is_informational() => continue,
                    Ok(Some(r)) => return Poll::Ready(Ok(r)),
                    Ok(None) => {}
                }
            }
            match ex.conn.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(fail(
                        "the upstream closed the connection before a response".into(),
                        heard,
                        &ex,
                    )))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(fail(error_chain(&e), heard, &ex))),
                Poll::Pending => {
                    // Every return of `Pending` has polled the timer, so it will wake us.
                    let timer = deadline.and(ex.conn.timer.as_mut());
                    if timer.is_some_and(|t| t.as_mut().poll(cx).is_ready()) {
                        let mut e = fail("the route's timeout passed".into(), heard, &ex);
                        e.timed_out = true;
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Pending;
                }
            }
        }
    })
    .await?;
    Ok((resp, ex))
}
