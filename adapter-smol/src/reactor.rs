//! [`Runtime`](crate::Runtime) pieces built on async-io, the reactor under smol and async-std.
//!
//! The smol adapter and `looppool-async-std` both use these, so their bindings differ only in
//! how they spawn tasks and run a worker's main future. Another runtime on async-io can use
//! them too.

use looppool_core::{BoxFuture, BoxIo};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A future that completes after `duration`, on async-io's timer.
pub fn sleep(duration: Duration) -> BoxFuture<()> {
    Box::pin(async move {
        async_io::Timer::after(duration).await;
    })
}

/// Registers a Unix stream socket with async-io's reactor.
pub fn wrap_unix(stream: UnixStream) -> io::Result<BoxIo> {
    Ok(Box::new(async_io::Async::new(stream)?))
}

/// Waits until `fd` is readable, on async-io's reactor.
pub fn wait_readable(fd: OwnedFd) -> Option<BoxFuture<io::Result<()>>> {
    Some(Box::pin(async move {
        async_io::Async::new(fd)?.readable().await
    }))
}
