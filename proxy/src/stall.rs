//! A client connection that fails its writes when the client stops reading
//! for too long (nginx's `send_timeout`). hyper has no write timeout: a
//! client that never reads would hold its connection, the response body
//! (and for a cache fill, the upstream connection and the coalescing slot
//! of its key) for as long as it likes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Wraps a stream; a write (or flush) that makes no progress for `limit`
/// fails with `TimedOut`, which ends the connection.
pub struct WriteStallIo<T> {
    inner: T,
    limit: Duration,
    stalled_since: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteStallIo<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled_since: None,
        }
    }

    /// Called when the inner write returned `Pending`: start or check the
    /// stall clock.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.limit;
        let sleep = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("client read nothing for {limit:?}"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed(&mut self) {
        self.stalled_since = None;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteStallIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteStallIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.stalled(cx).map(Err),
            ready => {
                self.progressed();
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.stalled(cx).map(Err),
            ready => {
                self.progressed();
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.stalled(cx).map(Err),
            ready => {
                self.progressed();
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_reader_that_stops_fails_the_writer_and_one_that_reads_does_not() {
        // A 64 KiB pipe: the writer blocks once it is full.
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let mut w = WriteStallIo::new(a, Duration::from_millis(100));
        let chunk = vec![7u8; 16 * 1024];
        // Reader keeps up: 1 MiB goes through.
        let reader = tokio::spawn(async move {
            let mut got = 0usize;
            let mut buf = vec![0u8; 8192];
            while got < 1024 * 1024 {
                got += b.read(&mut buf).await.expect("read");
            }
            b
        });
        for _ in 0..64 {
            w.write_all(&chunk).await.expect("reader keeps up");
        }
        let _b = reader.await.expect("reader");
        // Nobody reads any more: the pipe fills, then the write fails.
        let mut err = None;
        for _ in 0..100 {
            if let Err(e) = w.write_all(&chunk).await {
                err = Some(e);
                break;
            }
        }
        assert_eq!(
            err.map(|e| e.kind()),
            Some(io::ErrorKind::TimedOut),
            "a stalled write fails"
        );
    }
}
