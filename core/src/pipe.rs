//! An in-memory duplex byte stream, the transport of [`StartMethod::Thread`](crate::StartMethod).
//!
//! Each direction is a bounded byte queue. Dropping or closing one end is seen by the other as
//! end-of-file (when reading) and as a broken pipe (when writing), the same as a socket, so the
//! pool's death detection works unchanged over it.

use futures_io::{AsyncRead, AsyncWrite};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
struct Queue {
    bytes: VecDeque<u8>,
    capacity: usize,
    writer_gone: bool,
    reader_gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

#[derive(Debug, Default)]
struct Direction(Mutex<Queue>);

impl Direction {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues what fits of `buf`; when nothing does, `writer` (if any) is woken once room frees
    /// up.
    fn push(&self, buf: &[u8], writer: Option<&Waker>) -> Poll<io::Result<usize>> {
        let mut q = self.lock();
        if q.reader_gone || q.writer_gone {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = q.capacity - q.bytes.len();
        if room == 0 {
            if let Some(w) = writer {
                q.writer = Some(w.clone());
            }
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        q.bytes.extend(&buf[..n]);
        if let Some(w) = q.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn close_writer(&self) {
        let mut q = self.lock();
        q.writer_gone = true;
        if let Some(w) = q.reader.take() {
            w.wake();
        }
    }

    fn close_reader(&self) {
        let mut q = self.lock();
        q.reader_gone = true;
        q.bytes.clear();
        if let Some(w) = q.writer.take() {
            w.wake();
        }
    }
}

/// One end of an in-memory duplex stream. See [`duplex`].
#[derive(Debug)]
pub struct PipeEnd {
    rx: Arc<Direction>,
    tx: Arc<Direction>,
}

/// Writes to one end's outgoing direction from any thread, without waiting.
#[derive(Debug, Clone)]
pub(crate) struct PipeSender(Arc<Direction>);

impl PipeSender {
    /// Queues what fits now; `WouldBlock` when the direction is full, `BrokenPipe` once either
    /// end is gone.
    pub(crate) fn try_send(&self, buf: &[u8]) -> io::Result<usize> {
        match self.0.push(buf, None) {
            Poll::Ready(sent) => sent,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Closes both directions of a pipe from outside, as if both ends had been dropped.
#[derive(Debug, Clone)]
pub struct PipeCloser {
    a: Arc<Direction>,
    b: Arc<Direction>,
}

impl PipeCloser {
    /// Both ends now read end-of-file and fail to write.
    pub fn close(&self) {
        for d in [&self.a, &self.b] {
            d.close_writer();
            d.close_reader();
        }
    }
}

/// A connected pair of in-memory stream ends; each direction buffers up to `capacity` bytes.
///
/// # Panics
/// If `capacity` is zero.
pub fn duplex(capacity: usize) -> (PipeEnd, PipeEnd, PipeCloser) {
    assert!(capacity > 0, "a pipe needs room for at least one byte");
    let new = || {
        Arc::new(Direction(Mutex::new(Queue {
            capacity,
            ..Queue::default()
        })))
    };
    let (a, b) = (new(), new());
    let closer = PipeCloser {
        a: a.clone(),
        b: b.clone(),
    };
    (
        PipeEnd {
            rx: a.clone(),
            tx: b.clone(),
        },
        PipeEnd { rx: b, tx: a },
        closer,
    )
}

impl PipeEnd {
    /// A way to write this end's outgoing direction from another thread.
    pub(crate) fn sender(&self) -> PipeSender {
        PipeSender(self.tx.clone())
    }
}

impl AsyncRead for PipeEnd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut q = self.rx.lock();
        if q.reader_gone {
            return Poll::Ready(Ok(0));
        }
        if q.bytes.is_empty() {
            if q.writer_gone || buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            q.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(q.bytes.len());
        for (dst, src) in buf.iter_mut().zip(q.bytes.drain(..n)) {
            *dst = src;
        }
        if let Some(w) = q.writer.take() {
            w.wake();
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for PipeEnd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.tx.push(buf, Some(cx.waker()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close_writer();
        Poll::Ready(Ok(()))
    }
}

impl Drop for PipeEnd {
    fn drop(&mut self) {
        self.tx.close_writer();
        self.rx.close_reader();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_executor::block_on;
    use futures_util::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn bytes_cross_in_both_directions_through_a_small_buffer() {
        let (mut a, mut b, _) = duplex(3);
        let writer = std::thread::spawn(move || {
            block_on(a.write_all(b"hello, world")).unwrap();
            let mut back = [0; 2];
            block_on(a.read_exact(&mut back)).unwrap();
            back
        });
        let mut got = [0; 12];
        block_on(b.read_exact(&mut got)).unwrap();
        assert_eq!(&got, b"hello, world");
        block_on(b.write_all(b"ok")).unwrap();
        assert_eq!(&writer.join().unwrap(), b"ok");
    }

    #[test]
    fn dropping_an_end_is_eof_for_the_reader_and_broken_pipe_for_the_writer() {
        let (mut a, b, _) = duplex(8);
        drop(b);
        let mut buf = [0; 4];
        assert_eq!(block_on(a.read(&mut buf)).unwrap(), 0);
        let err = block_on(a.write(b"x")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn the_closer_ends_both_sides() {
        let (mut a, mut b, closer) = duplex(8);
        block_on(a.write_all(b"lost")).unwrap();
        closer.close();
        let mut buf = [0; 4];
        assert_eq!(block_on(b.read(&mut buf)).unwrap(), 0);
        assert_eq!(block_on(a.read(&mut buf)).unwrap(), 0);
        assert!(block_on(b.write(b"x")).is_err());
    }
}
