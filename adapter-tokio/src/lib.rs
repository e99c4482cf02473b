//! **looppool** on tokio: a pool of worker processes, each running its own tokio runtime, driven
//! from a parent that keeps serving its own.
//!
//! This crate is the [`Runtime`] binding plus a re-export of [`looppool_core`]; everything about
//! pools, workers and their guarantees is documented there.
//!
//! ```no_run
//! use looppool_tokio::{async_trait, BoxError, Failure, Context, Worker};
//!
//! struct Doubler;
//!
//! #[async_trait(?Send)]
//! impl Worker for Doubler {
//!     type Task = u64;
//!     type Output = u64;
//!     type Error = Failure;
//!
//!     async fn init(_ctx: &Context<u64>) -> Result<Self, BoxError> {
//!         Ok(Doubler)
//!     }
//!
//!     async fn process(&self, n: u64, ctx: &Context<u64>) -> Result<(), Failure> {
//!         ctx.put(n * 2).await?;
//!         Ok(())
//!     }
//! }
//!
//! fn main() {
//!     // Worker processes are this executable run again; this line turns them into workers.
//!     looppool_tokio::init(&[looppool_tokio::worker::<Doubler>()]);
//!
//!     let rt = tokio::runtime::Runtime::new().unwrap();
//!     rt.block_on(async {
//!         let pool = looppool_tokio::builder::<Doubler>().workers(4).start().await.unwrap();
//!         assert_eq!(pool.call(21).await.unwrap(), 42);
//!         pool.stop().await;
//!     });
//! }
//! ```
#![forbid(unsafe_code)]

pub use looppool_core::*;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

mod link;

/// The tokio [`Runtime`]: spawns on the ambient tokio runtime in the parent, and builds a fresh
/// one in each worker.
///
/// Workers get a current-thread runtime by default, with a `LocalSet` so that the worker (and
/// `tokio::task::spawn_local`) can hold `!Send` state. [`Tokio::multi_thread`] gives them a
/// multi-threaded runtime instead; the worker's own tasks still run on its main thread, while
/// `tokio::spawn` and `spawn_blocking` inside the worker use the other threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokio {
    worker_threads: Option<usize>,
}

impl Tokio {
    /// Workers run a current-thread runtime (the default).
    pub fn current_thread() -> Self {
        Self {
            worker_threads: None,
        }
    }

    /// Workers run a multi-threaded runtime with `threads` worker threads.
    pub fn multi_thread(threads: usize) -> Self {
        Self {
            worker_threads: Some(threads.max(1)),
        }
    }
}

impl Runtime for Tokio {
    fn spawn(&self, future: BoxFuture<()>) {
        tokio::spawn(future);
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn wrap_unix(&self, stream: UnixStream) -> io::Result<BoxIo> {
        stream.set_nonblocking(true)?;
        Ok(Box::new(link::Link::new(stream)?))
    }

    fn wait_readable(&self, fd: OwnedFd) -> Option<BoxFuture<io::Result<()>>> {
        Some(Box::pin(async move {
            // Deprecated for owners whose descriptor may change or close under the reactor; an
            // `OwnedFd` moved in here keeps one open descriptor until the `AsyncFd` is dropped,
            // which is the condition `register_with_interest` (unsafe, forbidden here) states.
            #[allow(deprecated)]
            let fd = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)?;
            fd.readable().await?.retain_ready();
            Ok(())
        }))
    }

    fn alive_tasks(&self) -> Option<u64> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        Some(handle.metrics().num_alive_tasks() as u64)
    }

    fn block_on_local(&self, main: LocalBoxFuture<()>) {
        let mut builder = match self.worker_threads {
            None => tokio::runtime::Builder::new_current_thread(),
            Some(n) => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
        };
        let rt = builder
            .enable_all()
            .build()
            .expect("cannot build the worker's tokio runtime");
        tokio::task::LocalSet::new().block_on(&rt, main);
    }
}

/// The default tokio runtime binding, shared.
pub fn runtime() -> Arc<dyn Runtime> {
    Arc::new(Tokio::default())
}

/// A pool builder whose parent side runs on the ambient tokio runtime.
pub fn builder<W: Worker>() -> Builder<W> {
    Pool::builder(runtime())
}

/// Turns this process into a worker if it was started as one; otherwise returns at once. Call
/// it first thing in `main`.
///
/// It runs the worker types listed here and every worker type registered with
/// [`register!`](looppool_core::register) (by this program or the libraries it uses), each on
/// a current-thread tokio runtime. A `main` that only uses registered workers calls `init(&[])`.
///
/// # Panics
///
/// If two different worker types share a [`Worker::name`].
pub fn init(entries: &[Entry]) {
    looppool_core::init_with_registered(entries, runtime);
}

/// The [`Entry`] that runs worker `W` on a current-thread tokio runtime in a re-executed
/// process. List it in [`init`].
pub fn worker<W: Worker>() -> Entry {
    Entry::new::<W>(runtime)
}
