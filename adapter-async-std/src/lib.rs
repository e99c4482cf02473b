//! **looppool** on async-std: a pool of worker processes, each running async-std's executor.
//!
//! **async-std is discontinued upstream; its authors point users to smol.** This adapter is
//! kept working for programs that still run on async-std, and it takes its reactor code from
//! `looppool-smol` ([`looppool_smol::reactor`]; both runtimes sit on async-io). New code should use `looppool-smol`; the two speak
//! the same protocol, so an async-std parent can drive smol workers and the other way round.
//!
//! In the parent, pool tasks are spawned on async-std's thread pool, or on an executor of your
//! own ([`AsyncStd::with_executor`]) that `main` runs: then a reply reaches the task awaiting it
//! without crossing threads, which roughly halves a round trip's latency.
//!
//! This crate is the [`Runtime`] binding plus a re-export of [`looppool_core`]. Fork
//! ([`StartMethod::Fork`]) cannot be used from an async-std parent, whose executor and reactor
//! run on threads of their own; re-exec, the default, works.
//!
//! ```no_run
//! use looppool_async_std::{async_trait, BoxError, Failure, Context, Worker};
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
//!     looppool_async_std::init(&[looppool_async_std::worker::<Doubler>()]);
//!     async_std::task::block_on(async {
//!         let pool = looppool_async_std::builder::<Doubler>().workers(4).start().await.unwrap();
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

/// The async-std [`Runtime`].
#[derive(Clone, Default)]
pub struct AsyncStd {
    executor: Option<Arc<Executor<'static>>>,
}

/// The executor [`AsyncStd::with_executor`] spawns the parent's pool tasks on: async-executor's,
/// the one under async-std's own thread pool and smol's.
pub use async_executor::Executor;

impl std::fmt::Debug for AsyncStd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncStd")
            .field("own_executor", &self.executor.is_some())
            .finish()
    }
}

impl AsyncStd {
    /// Spawns the parent's pool tasks with `async_std::task::spawn`, on async-std's thread pool.
    pub fn global() -> Self {
        Self::default()
    }

    /// Spawns the parent's pool tasks on `executor`, which the program must be running.
    ///
    /// Run it where `main` blocks (`async_std::task::block_on(executor.run(main))`) and a reply
    /// reaches the task awaiting it without crossing threads: on async-std's thread pool every
    /// round trip pays for two wake-ups across threads. The pool's sockets and timers stay on
    /// async-io's reactor, as async-std's own do.
    pub fn with_executor(executor: Arc<Executor<'static>>) -> Self {
        Self {
            executor: Some(executor),
        }
    }
}

impl Runtime for AsyncStd {
    fn spawn(&self, future: BoxFuture<()>) {
        match &self.executor {
            Some(executor) => executor.spawn(future).detach(),
            None => {
                async_std::task::spawn(future);
            }
        }
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        looppool_smol::reactor::sleep(duration)
    }

    fn wrap_unix(&self, stream: UnixStream) -> io::Result<BoxIo> {
        looppool_smol::reactor::wrap_unix(stream)
    }

    fn wait_readable(&self, fd: OwnedFd) -> Option<BoxFuture<io::Result<()>>> {
        looppool_smol::reactor::wait_readable(fd)
    }

    fn block_on_local(&self, main: LocalBoxFuture<()>) {
        // Runs `main` on this thread; async-std's own executor threads serve `task::spawn`.
        async_std::task::block_on(main);
    }
}

/// The async-std runtime binding, shared.
pub fn runtime() -> Arc<dyn Runtime> {
    Arc::new(AsyncStd::global())
}

/// A pool builder whose parent side runs on async-std.
pub fn builder<W: Worker>() -> Builder<W> {
    Pool::builder(runtime())
}

/// Turns this process into a worker if it was started as one; otherwise returns at once. Call
/// it first thing in `main`.
///
/// It runs the worker types listed here and every worker type registered with
/// [`register!`](looppool_core::register) (by this program or the libraries it uses), each on
/// async-std. A `main` that only uses registered workers calls `init(&[])`.
///
/// # Panics
///
/// If two different worker types share a [`Worker::name`].
pub fn init(entries: &[Entry]) {
    looppool_core::init_with_registered(entries, runtime);
}

/// The [`Entry`] that runs worker `W` on async-std in a re-executed process. List it in
/// [`init`].
pub fn worker<W: Worker>() -> Entry {
    Entry::new::<W>(runtime)
}
