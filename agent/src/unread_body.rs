//! A request body that, when a handler drops it unread (a refusal before or during a
//! stream), is read on and discarded in the background for a bounded while.
//!
//! Why: a server that closes a socket with request bytes still unread makes the kernel answer
//! with a reset, and a client still sending the stream then sees "broken pipe" or "connection
//! reset" instead of the refusal the server wrote a moment before. Reading on for a little
//! lets the client read the refusal first ("lingering close", as Apache and nginx do).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;

/// At most this much of an abandoned body is read and discarded.
pub const LINGER_BYTES: u64 = 8 * 1024 * 1024;
/// And for at most this long.
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// Wraps a request body; see the module docs.
pub struct LingeringBody {
    inner: Body,
    finished: bool,
}

impl LingeringBody {
    pub fn new(inner: Body) -> Self {
        Self {
            inner,
            finished: false,
        }
    }
}

impl hyper::body::Body for LingeringBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.finished = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LingeringBody {
    fn drop(&mut self) {
        if self.finished || hyper::body::Body::is_end_stream(&self.inner) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let rest = std::mem::take(&mut self.inner);
        runtime.spawn(discard(rest));
    }
}

/// Reads and drops `body` until it ends, fails, or a limit is reached.
async fn discard(mut body: Body) {
    let read = async {
        let mut total = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            total += frame.data_ref().map_or(0, |d| d.len() as u64);
            if total >= LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, read).await;
}

/// The request mapper that puts every request body in a [`LingeringBody`].
pub async fn linger_on_refusal(req: axum::extract::Request) -> axum::extract::Request {
    req.map(|b| Body::new(LingeringBody::new(b)))
}
