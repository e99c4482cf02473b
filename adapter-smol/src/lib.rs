//! **looppool** on smol: a pool of worker processes, each running its own smol executor, driven
//! from a parent that keeps serving its own.
//!
//! This crate is the [`Runtime`] binding plus a re-export of [`looppool_core`]; everything about
//! pools, workers and their guarantees is documented there.
//!
//! Each worker runs a [`LocalExecutor`](smol::LocalExecutor) on its main thread, so a worker
//! may hold `!Send` state and start local tasks with [`spawn_local`].
//!
//! In the parent, pool tasks are spawned on smol's global executor, or on an executor of your
//! own ([`Smol::with_executor`]) that you run. Fork ([`StartMethod::Fork`]) cannot be used from
//! a smol parent: smol's reactor starts a thread the first time it is used, and fork is refused
//! in a process with more than one thread. Use re-exec, the default.
//!
//! ```no_run
//! use looppool_smol::{async_trait, BoxError, Failure, Context, Worker};
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
//!     looppool_smol::init(&[looppool_smol::worker::<Doubler>()]);
//!     smol::block_on(async {
//!         let pool = looppool_smol::builder::<Doubler>().workers(4).start().await.unwrap();
//!         assert_eq!(pool.call(21).await.unwrap(), 42);
//!         pool.stop().await;
//!     });
//! }
//! ```
#![forbid(unsafe_code)]

pub use looppool_core::*;

pub mod reactor;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// The smol [`Runtime`].
#[derive(Clone, Default)]
pub struct Smol {
    executor: Option<Arc<smol::Executor<'static>>>,
}

impl std::fmt::Debug for Smol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smol")
            .field("own_executor", &self.executor.is_some())
            .finish()
    }
}

impl Smol {
    /// Spawns the parent's pool tasks on smol's global executor.
    pub fn global() -> Self {
        Self::default()
    }

    /// Spawns the parent's pool tasks on `executor`, which the program must be running.
    ///
    /// Run it where `main` blocks (`smol::block_on(executor.run(main))`) and a reply reaches the
    /// task awaiting it without crossing threads: on the global executor every round trip pays
    /// for two wake-ups across threads.
    pub fn with_executor(executor: Arc<smol::Executor<'static>>) -> Self {
        Self {
            executor: Some(executor),
        }
    }
}

thread_local! {
    /// The executor of the worker running on this thread, for [`spawn_local`].
    static LOCAL: RefCell<Option<Rc<smol::LocalExecutor<'static>>>> = const { RefCell::new(None) };
}

/// Spawns a `!Send` task on the current worker's executor.
///
/// # Panics
/// If called outside a worker run by this adapter.
pub fn spawn_local<T: 'static>(future: impl Future<Output = T> + 'static) -> smol::Task<T> {
    LOCAL.with(|local| {
        let local = local.borrow();
        let executor = local
            .as_ref()
            .expect("looppool_smol::spawn_local called outside a looppool smol worker");
        executor.spawn(future)
    })
}

impl Runtime for Smol {
    fn spawn(&self, future: BoxFuture<()>) {
        match &self.executor {
            Some(executor) => executor.spawn(future).detach(),
            None => smol::spawn(future).detach(),
        }
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        reactor::sleep(duration)
    }

    fn wrap_unix(&self, stream: UnixStream) -> io::Result<BoxIo> {
        reactor::wrap_unix(stream)
    }

    fn wait_readable(&self, fd: OwnedFd) -> Option<BoxFuture<io::Result<()>>> {
        reactor::wait_readable(fd)
    }

    fn block_on_local(&self, main: LocalBoxFuture<()>) {
        let executor = Rc::new(smol::LocalExecutor::new());
        LOCAL.with(|local| *local.borrow_mut() = Some(executor.clone()));
        smol::block_on(executor.run(main));
        LOCAL.with(|local| *local.borrow_mut() = None);
    }
}

/// The smol runtime binding on the global executor, shared.
pub fn runtime() -> Arc<dyn Runtime> {
    Arc::new(Smol::global())
}

/// A pool builder whose parent side runs on smol's global executor.
pub fn builder<W: Worker>() -> Builder<W> {
    Pool::builder(runtime())
}

/// Turns this process into a worker if it was started as one; otherwise returns at once. Call
/// it first thing in `main`.
///
/// It runs the worker types listed here and every worker type registered with
/// [`register!`](looppool_core::register) (by this program or the libraries it uses), each on
/// a smol local executor. A `main` that only uses registered workers calls `init(&[])`.
///
/// # Panics
///
/// If two different worker types share a [`Worker::name`].
pub fn init(entries: &[Entry]) {
    looppool_core::init_with_registered(entries, runtime);
}

/// The [`Entry`] that runs worker `W` on a smol local executor in a re-executed process. List
/// it in [`init`].
pub fn worker<W: Worker>() -> Entry {
    Entry::new::<W>(runtime)
}
