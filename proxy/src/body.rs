//! Body types: boxed, streamed bodies, a prefix-then-rest body for responses
//! that turned out too large to cache, and a size-limited request body.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use crate::fill_budget::{FillBudget, Reservation};

/// Error type carried by proxy bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type used everywhere in the proxy: bytes already in memory
/// (a cache hit, an error page: no allocation of a body object), or any
/// other body, boxed.
pub enum Body {
    /// One data frame, or none (`None` once sent, and for an empty body).
    Bytes(Option<Bytes>),
    Boxed(BoxBody<Bytes, BoxError>),
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Bytes(data) => Poll::Ready(
                data.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Body::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Bytes(data) => data.as_ref().is_none_or(Bytes::is_empty),
            Body::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Bytes(data) => SizeHint::with_exact(data.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Boxed(b) => b.size_hint(),
        }
    }
}

/// An empty body.
pub fn empty() -> Body {
    Body::Bytes(None)
}

/// A body from bytes already in memory.
pub fn full(b: impl Into<Bytes>) -> Body {
    Body::Bytes(Some(b.into()))
}

/// Any other body, boxed.
pub fn boxed<B>(b: B) -> Body
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Send + Sync + 'static,
{
    Body::Boxed(b.boxed())
}

/// A streamed upstream body.
pub fn stream(b: Incoming) -> Body {
    boxed(b.map_err(|e| Box::new(e) as BoxError))
}

/// A streamed upstream body that fails after `idle` without a frame.
pub fn stream_idle(b: Incoming, idle: std::time::Duration) -> Body {
    boxed(IdleTimeoutBody::new(stream(b), idle))
}

/// Already-read chunks followed by the rest of an upstream body.
pub struct PrefixedBody {
    prefix: std::collections::VecDeque<Bytes>,
    rest: Incoming,
}

impl PrefixedBody {
    pub fn new(prefix: Vec<Bytes>, rest: Incoming) -> Self {
        Self {
            prefix: prefix.into(),
            rest,
        }
    }
}

impl HttpBody for PrefixedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match Pin::new(&mut self.rest).poll_frame(cx) {
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let pre: u64 = self.prefix.iter().map(|b| b.len() as u64).sum();
        let inner = self.rest.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(inner.lower() + pre);
        if let Some(u) = inner.upper() {
            h.set_upper(u + pre);
        }
        h
    }
}

/// Error raised when a request body exceeds the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct TooLarge(pub u64);

/// A request body that fails once more than `limit` bytes were read, and
/// records that it did so the caller can answer 413.
pub struct LimitedBody {
    inner: Incoming,
    remaining: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
}

impl LimitedBody {
    pub fn new(inner: Incoming, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            remaining: limit,
            limit,
            exceeded,
        }
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > self.remaining {
                        self.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(self.limit)))));
                    }
                    self.remaining -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Callback receiving a complete body.
pub type OnComplete = Box<dyn FnOnce(Bytes) + Send + Sync>;
/// Callback run when the body turned out larger than the limit.
pub type OnOverflow = Box<dyn FnOnce() + Send + Sync>;

/// Streams an upstream body to the client while keeping a copy; when the
/// body ends within `limit` bytes, `on_complete` gets the copy (to store it).
/// `hold` (e.g. the coalescing guard) is released as soon as the outcome is
/// known: complete, too large, failed, or dropped by the client.
pub struct TeeBody {
    inner: Incoming,
    buf: Option<bytes::BytesMut>,
    limit: u64,
    on_complete: Option<OnComplete>,
    on_overflow: Option<OnOverflow>,
    hold: Option<Box<dyn std::any::Any + Send + Sync>>,
    /// The copy's share of the fill budget ([`crate::fill_budget`]), with the callback run
    /// when the budget cannot spare more (the copy is then dropped, the body streams on).
    budget: Option<(Reservation, Option<OnOverflow>)>,
}

impl TeeBody {
    pub fn new(
        inner: Incoming,
        expected_len: Option<u64>,
        limit: u64,
        on_complete: OnComplete,
        on_overflow: OnOverflow,
        hold: Box<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        let cap = expected_len.unwrap_or(8 * 1024).min(limit);
        Self {
            inner,
            buf: Some(bytes::BytesMut::with_capacity(
                usize::try_from(cap).unwrap_or(0),
            )),
            limit,
            on_complete: Some(on_complete),
            on_overflow: Some(on_overflow),
            hold: Some(hold),
            budget: None,
        }
    }

    /// Counts the copy against `budget`; when the budget cannot spare what the copy needs,
    /// `on_no_room` runs and the body streams through uncached.
    pub fn with_budget(mut self, budget: &Arc<FillBudget>, on_no_room: OnOverflow) -> Self {
        let held = self.buf.as_ref().map_or(0, |b| b.capacity() as u64);
        match budget.reserve(held) {
            Some(r) => self.budget = Some((r, Some(on_no_room))),
            None => {
                on_no_room();
                self.abandon();
            }
        }
        self
    }

    /// Appends `data` to the copy, within the budget; false when the budget ran out (the copy
    /// is then abandoned).
    fn copy(&mut self, data: &Bytes) -> bool {
        let Some(buf) = self.buf.as_mut() else {
            return true;
        };
        let Some((reservation, on_no_room)) = self.budget.as_mut() else {
            buf.extend_from_slice(data);
            return true;
        };
        let len = buf.len() + data.len();
        if len > buf.capacity() {
            let target = len.max(buf.capacity().saturating_mul(2));
            let target = target
                .min(usize::try_from(self.limit).unwrap_or(usize::MAX))
                .max(len);
            if reservation.grow_to(target as u64) {
                buf.reserve(target - buf.len());
            }
        }
        if len <= buf.capacity() && reservation.grow_to(buf.capacity() as u64) {
            buf.extend_from_slice(data);
            return true;
        }
        if let Some(f) = on_no_room.take() {
            f();
        }
        self.abandon();
        false
    }

    fn complete(&mut self) {
        if let (Some(buf), Some(f)) = (self.buf.take(), self.on_complete.take()) {
            f(buf.freeze());
        }
        self.budget = None;
        self.on_overflow = None;
        self.hold = None;
    }

    fn abandon(&mut self) {
        self.buf = None;
        self.budget = None;
        self.on_complete = None;
        self.on_overflow = None;
        self.hold = None;
    }
}

impl HttpBody for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(buf), Some(data)) = (this.buf.as_mut(), frame.data_ref()) {
                    if (buf.len() + data.len()) as u64 > this.limit {
                        if let Some(f) = this.on_overflow.take() {
                            f();
                        }
                        this.abandon();
                    } else {
                        let data = data.clone();
                        this.copy(&data);
                    }
                }
                // hyper stops polling once a sized body reports its end.
                if this.inner.is_end_stream() {
                    this.complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.complete();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.abandon();
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Error raised when an upstream body stalls.
#[derive(Debug, thiserror::Error)]
#[error("upstream body idle for more than {0:?}")]
pub struct IdleTimeout(pub std::time::Duration);

/// Fails a streamed body when no frame arrives for `timeout`.
pub struct IdleTimeoutBody<B> {
    inner: B,
    timeout: std::time::Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<B> IdleTimeoutBody<B> {
    pub fn new(inner: B, timeout: std::time::Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl<B> HttpBody for IdleTimeoutBody<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                let next = tokio::time::Instant::now() + this.timeout;
                this.sleep.as_mut().reset(next);
                Poll::Ready(r)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(IdleTimeout(this.timeout))))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_in_memory_are_one_frame_with_their_exact_length() {
        let mut b = full("hello");
        assert_eq!(b.size_hint().exact(), Some(5));
        assert!(!b.is_end_stream());
        let frame = b.frame().await.expect("a frame").expect("no error");
        assert_eq!(
            frame.into_data().expect("data"),
            Bytes::from_static(b"hello")
        );
        assert!(b.is_end_stream());
        assert!(b.frame().await.is_none());
        for mut e in [empty(), full(Bytes::new())] {
            assert!(e.is_end_stream());
            assert_eq!(e.size_hint().exact(), Some(0));
            assert!(e.frame().await.is_none(), "an empty body has no frame");
        }
    }

    #[tokio::test]
    async fn a_boxed_body_is_passed_through() {
        let inner = http_body_util::Full::new(Bytes::from_static(b"abcd"))
            .map_err(|never| -> BoxError { match never {} });
        let b = boxed(inner);
        assert_eq!(b.size_hint().exact(), Some(4));
        let all = b.collect().await.expect("body").to_bytes();
        assert_eq!(all, Bytes::from_static(b"abcd"));
    }
}
