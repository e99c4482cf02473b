//! [`Runtime`](crate::Runtime) pieces built on async-io, the reactor under smol and async-std.
//!
//! The smol adapter and `looppool-async-std` both use these, so their bindings differ only in
//! how they spawn tasks and run a worker's main future. Another runtime on async-io can use
//! them too.

use async_io::Async;
use futures_io::{AsyncRead, AsyncWrite};
use looppool_core::{BoxFuture, BoxIo};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

/// A future that completes after `duration`, on async-io's timer.
pub fn sleep(duration: Duration) -> BoxFuture<()> {
    Box::pin(async move {
        async_io::Timer::after(duration).await;
    })
}

/// Registers a Unix stream socket with async-io's reactor.
pub fn wrap_unix(stream: UnixStream) -> io::Result<BoxIo> {
    Ok(Box::new(Link {
        io: Async::new(stream)?,
        drained: false,
    }))
}

/// A link on async-io's reactor that does not ask an emptied socket for more.
///
/// `Async`'s reads try the socket until it says it has nothing, then wait; the event that woke
/// the reader is still on record, so the first wait returns at once and the socket is asked a
/// second time. A read that did not fill the buffer emptied the socket: here the next read
/// waits for the reactor straight away, with that spent event cleared.
#[derive(Debug)]
struct Link {
    io: Async<UnixStream>,
    /// The last read emptied the socket: wait for an event before reading again.
    drained: bool,
}

impl AsyncRead for Link {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.drained {
                match this.io.get_ref().read(buf) {
                    Ok(n) => {
                        if n > 0 && n < buf.len() {
                            this.drained = true;
                            // Clears the event that woke us, or starts waiting for the next.
                            // Data that came meanwhile is seen either way: the reactor reports
                            // a readable socket as soon as it is asked to watch it.
                            let _ = this.io.poll_readable(cx);
                        }
                        return Poll::Ready(Ok(n));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => this.drained = true,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            ready!(this.io.poll_readable(cx))?;
            this.drained = false;
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_close(cx)
    }
}

/// Waits until `fd` is readable, on async-io's reactor.
pub fn wait_readable(fd: OwnedFd) -> Option<BoxFuture<io::Result<()>>> {
    Some(Box::pin(async move {
        async_io::Async::new(fd)?.readable().await
    }))
}
