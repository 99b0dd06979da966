//! The request body sent up: it takes the client's body only when first polled, so a request
//! whose connection was refused can go to the next upstream.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// The body sent upstream. It takes the client's body only when first polled, so a request
/// whose connection was refused can be sent again to the next upstream. Trailers are dropped:
/// a client never gets to add headers after the proxy's checks.
pub struct UpBody {
    pub(super) slot: Option<Arc<Mutex<Option<Incoming>>>>,
    pub(super) taken: Option<Incoming>,
    pub(super) hint: SizeHint,
    pub(super) end: bool,
}

impl UpBody {
    pub fn empty() -> UpBody {
        UpBody {
            slot: None,
            taken: None,
            hint: SizeHint::with_exact(0),
            end: true,
        }
    }

    pub fn new(body: Incoming) -> UpBody {
        let hint = body.size_hint();
        let end = body.is_end_stream();
        if end {
            return UpBody::empty();
        }
        UpBody {
            slot: Some(Arc::new(Mutex::new(Some(body)))),
            taken: None,
            hint,
            end,
        }
    }

    pub(super) fn retry(&self) -> UpBody {
        UpBody {
            slot: self.slot.clone(),
            taken: None,
            hint: self.hint,
            end: self.end,
        }
    }

    /// True while no attempt has started reading the client's body.
    pub(super) fn unread(&self) -> bool {
        match &self.slot {
            None => true,
            Some(s) => s.lock().map(|g| g.is_some()).unwrap_or(false),
        }
    }
}

impl HttpBody for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.taken.is_none() {
            let Some(slot) = &this.slot else {
                return Poll::Ready(None);
            };
            this.taken = slot.lock().ok().and_then(|mut g| g.take());
            if this.taken.is_none() {
                return Poll::Ready(None);
            }
        }
        let Some(inner) = this.taken.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) if f.is_trailers() => Poll::Ready(None),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.end
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}
