//! A worker's link on tokio's reactor, registered for what the link waits on and nothing more.
//!
//! `tokio::net::UnixStream` registers its socket for both reading and writing, edge-triggered.
//! A Unix socket turns writable again each time its peer reads, so every frame the other side
//! reads woke this side's reactor for nothing: on one CPU, two context switches per frame. A
//! link is read far more often than its writes find the socket full, so here the socket is
//! registered for reading only; a write is tried at once, and only when the socket is full is a
//! duplicate descriptor registered for writing, until that write gets through.

use futures_io::{AsyncRead, AsyncWrite};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A connected Unix stream socket on tokio's reactor.
#[derive(Debug)]
pub(crate) struct Link {
    /// The socket, registered for reading.
    socket: AsyncFd<UnixStream>,
    /// A duplicate registered for writing, while a write waits for room.
    waiting_write: Option<AsyncFd<UnixStream>>,
}

/// Registers `socket` for `interest`.
///
/// `with_interest` is deprecated for owners whose descriptor may change or close under the
/// reactor; a `UnixStream` moved in here keeps its one descriptor open until the `AsyncFd` is
/// dropped, which is the condition `register_with_interest` (unsafe, forbidden here) states.
#[allow(deprecated)]
fn register(socket: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    AsyncFd::with_interest(socket, interest)
}

impl Link {
    /// Registers `stream` (already non-blocking) with the current tokio runtime.
    pub(crate) fn new(stream: UnixStream) -> io::Result<Self> {
        Ok(Link {
            socket: register(stream, Interest::READABLE)?,
            waiting_write: None,
        })
    }
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = ready!(self.socket.poll_read_ready(cx))?;
            match (&mut ready.get_inner()).read(buf) {
                Ok(n) => {
                    // A short read emptied the socket: the next read waits for new data's edge
                    // instead of asking the kernel again to hear it has none.
                    if n > 0 && n < buf.len() {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.waiting_write.is_none() {
            match (&mut this.socket.get_ref()).write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let duplicate = this.socket.get_ref().try_clone()?;
                    this.waiting_write = Some(register(duplicate, Interest::WRITABLE)?);
                }
                written => return Poll::Ready(written),
            }
        }
        let waiting = this
            .waiting_write
            .as_ref()
            .expect("registered for writing above");
        loop {
            let mut ready = ready!(waiting.poll_write_ready(cx))?;
            match (&mut ready.get_inner()).write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                written => {
                    // Room again: the duplicate leaves the reactor until the socket fills up.
                    this.waiting_write = None;
                    return Poll::Ready(written);
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.get_ref().shutdown(Shutdown::Write))
    }
}
