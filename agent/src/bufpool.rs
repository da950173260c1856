//! Read buffers lent out as [`Bytes`] and returned to their pool when the last reference is
//! dropped (hyper has written them, `zfs receive` has read them), so a stream allocates a
//! handful of buffers, not one per chunk: fresh large allocations cost a page fault per 4 KiB.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A pool of equal-sized buffers; at most `keep` idle ones are kept.
#[derive(Clone)]
pub struct BufPool {
    idle: Arc<Mutex<Vec<Vec<u8>>>>,
    size: usize,
    keep: usize,
}

impl BufPool {
    /// A pool of `size`-byte buffers keeping at most `keep` idle ones.
    pub fn new(size: usize, keep: usize) -> Self {
        Self {
            idle: Arc::default(),
            size,
            keep,
        }
    }

    /// An idle buffer, or a new zeroed one.
    pub fn take(&self) -> Vec<u8> {
        self.idle
            .lock()
            .ok()
            .and_then(|mut v| v.pop())
            .unwrap_or_else(|| vec![0u8; self.size])
    }

    fn put(&self, buf: Vec<u8>) {
        if let Ok(mut v) = self.idle.lock()
            && v.len() < self.keep
        {
            v.push(buf);
        }
    }

    /// The first `len` bytes of `buf` as [`Bytes`]; the buffer returns to the pool on drop.
    pub fn freeze(&self, buf: Vec<u8>, len: usize) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            len,
            pool: self.clone(),
        })
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }
}

struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: BufPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_reference_goes() {
        let pool = BufPool::new(16, 2);
        let mut buf = pool.take();
        buf[..3].copy_from_slice(b"abc");
        let bytes = pool.freeze(buf, 3);
        let clone = bytes.clone();
        assert_eq!(&bytes[..], b"abc");
        drop(bytes);
        assert_eq!(pool.idle(), 0, "a clone still holds the buffer");
        drop(clone);
        assert_eq!(pool.idle(), 1);
        let again = pool.take();
        assert_eq!(again.len(), 16);
        assert_eq!(&again[..3], b"abc", "the same buffer is reused");
    }

    #[test]
    fn at_most_keep_idle_buffers_are_kept() {
        let pool = BufPool::new(8, 1);
        let a = pool.freeze(pool.take(), 8);
        let b = pool.freeze(pool.take(), 8);
        drop(a);
        drop(b);
        assert_eq!(pool.idle(), 1);
    }
}
