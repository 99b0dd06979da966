//! Copies bytes both ways between two connections (an upgraded WebSocket), holding a buffer
//! only while bytes are in flight.
//!
//! `tokio::io::copy_bidirectional` keeps a buffer per direction for the connection's whole
//! life; with thousands of mostly idle WebSockets that is most of what each costs. Here a
//! direction takes a buffer from a small per-thread pool just for the read, gives it back at
//! once when there was nothing to read, and otherwise as soon as the bytes are written. An
//! `AsyncRead` that returns `Pending` has put nothing in the buffer, so nothing is lost.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read at once: a full TLS record's worth, so large messages move in few steps.
const BUF: usize = 16 * 1024;
/// Buffers kept per thread for the next read.
const POOL_MAX: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF].into_boxed_slice())
}

fn give_buf(b: Box<[u8]>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(b);
        }
    });
}

/// One direction: reader → writer.
#[derive(Default)]
struct Half {
    /// Bytes read and not yet all written: `buf[pos..len]`.
    buf: Option<Box<[u8]>>,
    pos: usize,
    len: usize,
    /// Written since the last flush.
    unflushed: bool,
    eof: bool,
    done: bool,
    moved: u64,
}

impl Half {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(b) = &self.buf {
                while self.pos < self.len {
                    let n = ready!(Pin::new(&mut *w).poll_write(cx, &b[self.pos..self.len]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.pos += n;
                    self.moved += n as u64;
                    self.unflushed = true;
                }
                if let Some(b) = self.buf.take() {
                    give_buf(b);
                }
                continue;
            }
            if self.eof {
                // Shutting down flushes what is left, then ends the writer's side.
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let mut b = take_buf();
            let mut rb = ReadBuf::new(&mut b);
            match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        give_buf(b);
                        self.eof = true;
                    } else {
                        (self.pos, self.len) = (0, n);
                        self.buf = Some(b);
                    }
                }
                Poll::Ready(Err(e)) => {
                    give_buf(b);
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    give_buf(b);
                    // Nothing more to read for now: push out what was written (a TLS
                    // writer may hold it) before waiting.
                    if self.unflushed {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Relays `a` ⇄ `b` until both directions have ended (each end's EOF is passed on as a
/// shutdown), or either fails. Resolves to the bytes moved (a → b, b → a).
pub struct Relay<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Half,
    b_to_a: Half,
}

pub fn relay<'a, A, B>(a: &'a mut A, b: &'a mut B) -> Relay<'a, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    Relay {
        a,
        b,
        a_to_b: Half::default(),
        b_to_a: Half::default(),
    }
}

#[cfg(test)]
impl<A: ?Sized, B: ?Sized> Relay<'_, A, B> {
    /// Buffers this relay holds now (0 when no bytes are in flight).
    fn buffers_held(&self) -> usize {
        usize::from(self.a_to_b.buf.is_some()) + usize::from(self.b_to_a.buf.is_some())
    }
}

impl<A, B> Future for Relay<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let ab = this.a_to_b.poll(cx, &mut *this.a, &mut *this.b)?;
        let ba = this.b_to_a.poll(cx, &mut *this.b, &mut *this.a)?;
        if ab.is_ready() && ba.is_ready() {
            Poll::Ready(Ok((this.a_to_b.moved, this.b_to_a.moved)))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_move_both_ways_and_an_idle_relay_holds_no_buffer() {
        let (mut client, mut a) = duplex(64);
        let (mut b, mut upstream) = duplex(64);
        let mut r = std::pin::pin!(relay(&mut a, &mut b));
        // Nothing to move: polled, it waits without keeping a buffer.
        assert!(futures_poll(r.as_mut()).is_pending());
        assert_eq!(r.buffers_held(), 0);

        client.write_all(b"hello").await.expect("duplex");
        assert!(futures_poll(r.as_mut()).is_pending());
        let mut got = [0u8; 5];
        upstream.read_exact(&mut got).await.expect("duplex");
        assert_eq!(&got, b"hello");
        upstream.write_all(b"world").await.expect("duplex");
        assert!(futures_poll(r.as_mut()).is_pending());
        client.read_exact(&mut got).await.expect("duplex");
        assert_eq!(&got, b"world");
        assert_eq!(r.buffers_held(), 0);
    }

    #[tokio::test]
    async fn a_slow_reader_keeps_only_the_bytes_in_flight_and_gets_them_all() {
        // 1 MiB through a 64-byte pipe: many partial writes while the buffer is held.
        let (mut client, mut a) = duplex(64);
        let (mut b, mut upstream) = duplex(64);
        let data: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await?;
            client.shutdown().await?;
            // The other way ends too when the upstream closes.
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await?;
            Ok::<_, io::Error>(rest)
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            upstream.read_to_end(&mut got).await?;
            upstream.write_all(b"bye").await?;
            upstream.shutdown().await?;
            Ok::<_, io::Error>(got)
        });
        let moved = relay(&mut a, &mut b).await;
        assert!(matches!(moved, Ok((1_048_576, 3))), "{moved:?}");
        let got = reader.await.ok().and_then(Result::ok);
        assert_eq!(got.as_deref(), Some(&data[..]));
        let rest = writer.await.ok().and_then(Result::ok);
        assert_eq!(rest.as_deref(), Some(&b"bye"[..]));
    }

    #[tokio::test]
    async fn a_relay_whose_ends_are_both_gone_ends() {
        let (client, mut a) = duplex(64);
        let (mut b, upstream) = duplex(64);
        drop(upstream);
        drop(client);
        // Both ends gone: reading gives EOF, and the shutdown toward a closed peer is fine;
        // the relay ends rather than waiting forever.
        let r =
            tokio::time::timeout(std::time::Duration::from_secs(5), relay(&mut a, &mut b)).await;
        assert!(r.is_ok(), "the relay did not end");
    }

    fn futures_poll<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        f.poll(&mut cx)
    }
}
