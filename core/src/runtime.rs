//! The one trait an adapter implements to bind the pool to an async runtime.

use futures_io::{AsyncRead, AsyncWrite};
use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// A `Send` boxed future, as spawned on the parent's runtime.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A boxed future that need not be `Send`: a worker's main future, which may hold `!Send` state.
pub type LocalBoxFuture<T> = Pin<Box<dyn Future<Output = T> + 'static>>;

/// A duplex byte stream the pool can drive: one worker's link.
pub trait AsyncIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncIo for T {}

/// A boxed [`AsyncIo`].
pub type BoxIo = Box<dyn AsyncIo>;

/// What the pool needs from an async runtime, on both sides of a link.
///
/// In the parent the pool spawns one reader and one writer task per worker, sleeps for stop
/// deadlines and wraps each worker's socket. In a worker process (or thread) the pool calls
/// [`block_on_local`](Runtime::block_on_local) once, on a thread with no runtime, to build a
/// fresh runtime and run the worker's main future on it; that future then wraps its end of the
/// socket with [`wrap_unix`](Runtime::wrap_unix) from inside the runtime.
///
/// Implementations are small (see `looppool-tokio`, `looppool-smol`, `looppool-async-std`).
pub trait Runtime: Send + Sync + Debug + 'static {
    /// Runs `future` to completion in the background on the current runtime.
    fn spawn(&self, future: BoxFuture<()>);

    /// A future that completes after `duration`.
    fn sleep(&self, duration: Duration) -> BoxFuture<()>;

    /// Registers a connected Unix stream socket with the runtime's reactor.
    ///
    /// Called from within the runtime (a task it runs, or the future passed to
    /// [`block_on_local`](Runtime::block_on_local)).
    fn wrap_unix(&self, stream: UnixStream) -> io::Result<BoxIo>;

    /// Builds a new runtime on the calling thread and runs `main` on it until it completes.
    ///
    /// `main` may hold `!Send` state, so it must run on this thread (a current-thread runtime,
    /// a local executor, or a local task set on a multi-threaded runtime).
    fn block_on_local(&self, main: LocalBoxFuture<()>);

    /// Starts the thread a [`StartMethod::Thread`](crate::StartMethod::Thread) worker runs on;
    /// `body` builds the worker's runtime with [`block_on_local`](Runtime::block_on_local).
    ///
    /// The default starts a named OS thread. A simulation can run `body` on its own thread
    /// instead, with a `block_on_local` that schedules the worker's future on its executor, so
    /// that a whole pool runs deterministically on one thread.
    fn spawn_worker_thread(&self, name: String, body: Box<dyn FnOnce() + Send>) -> io::Result<()> {
        std::thread::Builder::new().name(name).spawn(body).map(drop)
    }

    /// How many tasks are alive on the calling thread's runtime, where the runtime tells
    /// (tokio's runtime metrics do); reported in a worker's statistics. The default: `None`.
    fn alive_tasks(&self) -> Option<u64> {
        None
    }

    /// A future that completes once `fd` is readable, registered with the runtime's reactor;
    /// `None` if this runtime cannot wait on a plain descriptor.
    ///
    /// The pool waits this way on a worker process's pidfd, which turns readable when the
    /// process exits, so a worker's death is seen even while a program it started still holds
    /// its link open. Without it the pool polls the process's status instead.
    fn wait_readable(&self, fd: OwnedFd) -> Option<BoxFuture<io::Result<()>>> {
        drop(fd);
        None
    }

    /// The current time. Overridable to simulate the flow of time in tests.
    fn now(&self) -> Instant {
        Instant::now()
    }

    /// Whether a worker on this runtime gets a flusher thread: one that sends the outputs and
    /// task ends the worker's loop has queued when a task holds the loop without yielding for
    /// more than a millisecond. The default: `true`.
    ///
    /// A simulation that runs every loop on one thread under a simulated clock returns `false`:
    /// its tasks never hold a loop in real time, and a thread sending on its own schedule would
    /// make runs differ.
    fn worker_flusher(&self) -> bool {
        true
    }
}

/// Returns `Pending` once, waking itself, so that the loop's other parts run before we go on.
pub(crate) async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}
