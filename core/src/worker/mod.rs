//! The worker side: the [`Worker`] trait users implement and the [`Context`] it is given.

mod context;
mod observe;
mod outbox;
mod runner;
mod serve;
mod signal;
mod turn;

pub use context::Context;
pub(crate) use observe::filter_code;
pub(crate) use outbox::DirectSink;
pub(crate) use serve::{exit_code, serve};

#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub use context::Fault;

use crate::error::BoxError;
use serde::{de::DeserializeOwned, Serialize};

/// A worker: state built once in its own process, then fed tasks on that process's event loop.
///
/// The pool runs `init` once in each worker process, after the process started and its runtime
/// was built, then calls `process` for each task it receives, up to the pool's per-worker
/// concurrency at a time, all on one thread. The worker may therefore hold `!Send` state
/// (`Rc`, `RefCell`, a runtime-local client) and use its runtime freely (spawn, timers, I/O).
///
/// Outputs are not a return value: a task emits zero or more of them with
/// [`Context::put`], and a worker may keep a clone of the init [`Context`] to emit unsolicited
/// outputs later (for example from a subscription it started). A task's end is reported to the
/// parent automatically when `process` returns or panics; there is nothing to forget to call.
///
/// ```
/// use looppool_core::{async_trait, BoxError, Context, Failure, Worker};
///
/// struct Doubler;
///
/// #[async_trait(?Send)]
/// impl Worker for Doubler {
///     type Task = u64;
///     type Output = u64;
///     type Error = Failure;
///
///     async fn init(_ctx: &Context<u64>) -> Result<Self, BoxError> {
///         Ok(Doubler)
///     }
///
///     async fn process(&self, n: u64, ctx: &Context<u64>) -> Result<(), Failure> {
///         if n > u64::MAX / 2 {
///             return Err(Failure::msg(format!("{n} is too large to double")));
///         }
///         ctx.put(n * 2).await?;
///         Ok(())
///     }
/// }
///
/// # use looppool_core::Runtime as _;
/// // The parent side on tokio, through its adapter: in a program, `#[tokio::main]`.
/// # looppool_tokio::runtime().block_on_local(Box::pin(async {
/// # let run = async {
/// // In a program: `looppool::init(&[looppool::worker::<Doubler>()])` first in `main`, then
/// // `looppool::builder::<Doubler>()`. Here, worker threads, which need no `init`.
/// let pool = looppool_core::Pool::<Doubler>::builder(looppool_tokio::runtime())
///     .start_method(looppool_core::StartMethod::Thread)
///     .start()
///     .await?;
/// assert_eq!(pool.call(21).await?, 42);
/// match pool.call(u64::MAX).await {
///     Err(looppool_core::CallError::Failed { error, .. }) => {
///         assert!(error.message().contains("too large"))
///     }
///     other => panic!("{other:?}"),
/// }
/// pool.stop().await;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # };
/// # run.await.expect("the example runs");
/// # }));
/// ```
///
/// A worker whose callers tell failures apart declares its own error type; the parent receives
/// the value in [`TaskError::Failed`](crate::TaskError::Failed) and
/// [`CallError::Failed`](crate::CallError::Failed):
///
/// ```
/// use looppool_core::{async_trait, BoxError, Context, Worker};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, thiserror::Error)]
/// enum LookupError {
///     #[error("no entry for {0}")]
///     Missing(String),
///     #[error("the store is read-only")]
///     ReadOnly,
/// }
///
/// struct Store;
///
/// #[async_trait(?Send)]
/// impl Worker for Store {
///     type Task = String;
///     type Output = u64;
///     type Error = LookupError;
///
///     async fn init(_ctx: &Context<u64>) -> Result<Self, BoxError> {
///         Ok(Store)
///     }
///
///     async fn process(&self, key: String, _ctx: &Context<u64>) -> Result<(), LookupError> {
///         Err(LookupError::Missing(key))
///     }
/// }
/// ```
#[async_trait::async_trait(?Send)]
pub trait Worker: Sized + 'static {
    /// What the parent sends.
    type Task: Serialize + DeserializeOwned + Send + 'static;
    /// What the worker emits.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// What `process` fails with. It is encoded in the worker and reaches the parent as a value
    /// in [`TaskError::Failed`](crate::TaskError::Failed); [`Failure`](crate::Failure) serves
    /// workers whose failures are text.
    type Error: Serialize
        + DeserializeOwned
        + std::fmt::Debug
        + std::fmt::Display
        + Send
        + Sync
        + 'static;

    /// The name that selects this worker type in a re-executed process.
    ///
    /// The default, the type's path, is stable for one build, which is all re-exec and fork
    /// need since parent and workers run the same executable. Override it when workers run
    /// from another build.
    fn name() -> &'static str {
        std::any::type_name::<Self>()
    }

    /// Builds the worker in its own process, once, before any task. An error or panic here
    /// fails the pool's start with [`Error::Init`](crate::Error::Init).
    async fn init(ctx: &Context<Self::Output>) -> Result<Self, BoxError>;

    /// Processes one task. An error or panic is reported to the parent for this task only; the
    /// worker goes on with the next one.
    async fn process(
        &self,
        task: Self::Task,
        ctx: &Context<Self::Output>,
    ) -> Result<(), Self::Error>;
}
