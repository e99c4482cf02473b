//! Configuring and starting a pool.

mod nice;
mod start;

use crate::launch::StartMethod;
use crate::protocol::{DEFAULT_MAX_FRAME, PROTOCOL_VERSION};
use crate::runtime::Runtime;
use crate::state::{RestartPolicy, Routing};
use crate::worker::Worker;
use nice::{WorkerNice, DEFAULT_NICE_BELOW_PARENT};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tracing::level_filters::LevelFilter;

/// Configures a [`Pool`](super::Pool). Made by [`Pool::builder`](super::Pool::builder) (or an adapter's `builder()`).
///
/// ```
/// # use looppool_core::{async_trait, BoxError, Context, Failure, Pool, StartMethod, Worker};
/// # struct Doubler;
/// # #[async_trait(?Send)]
/// # impl Worker for Doubler {
/// #     type Task = u64;
/// #     type Output = u64;
/// #     type Error = Failure;
/// #     async fn init(_: &Context<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
/// #     async fn process(&self, n: u64, ctx: &Context<u64>) -> Result<(), Failure> {
/// #         ctx.put(n * 2).await?;
/// #         Ok(())
/// #     }
/// # }
/// # use looppool_core::Runtime as _;
/// // The parent side on tokio, through its adapter: in a program, `#[tokio::main]`.
/// # looppool_tokio::runtime().block_on_local(Box::pin(async {
/// # let run = async {
/// use std::time::Duration;
///
/// let pool = Pool::<Doubler>::builder(looppool_tokio::runtime())
///     .name("doublers")
///     .start_method(StartMethod::Thread)
///     .workers(2)                                // default: the number of CPUs
///     .concurrency(4)                            // tasks running at once in one worker
///     .result_credit(8)                          // outputs emitted before acknowledgements
///     .task_timeout(Duration::from_secs(10))     // cancel a task that runs longer
///     .retries(1)                                // send a task lost with its worker again
///     .start()
///     .await?;
/// assert_eq!(pool.stats().workers.len(), 2);
/// assert_eq!(pool.call_timeout(4, Duration::from_secs(5)).await?, 8);
/// pool.stop().await;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # };
/// # run.await.expect("the example runs");
/// # }));
/// ```
pub struct Builder<W> {
    runtime: Arc<dyn Runtime>,
    worker_runtime: Option<Arc<dyn Runtime>>,
    name: String,
    workers: Option<usize>,
    capacity: Option<usize>,
    concurrency: usize,
    result_credit: usize,
    start_method: StartMethod,
    max_frame: usize,
    stop_timeout: Duration,
    handshake_timeout: Duration,
    frame_timeout: Duration,
    stop_backlog: usize,
    ignore_signals: bool,
    nice: WorkerNice,
    protocol_version: u32,
    respawn: bool,
    restart: RestartPolicy,
    retries: u32,
    task_timeout: Option<Duration>,
    stall_grace: Duration,
    recycle_after: Option<u64>,
    routing: Routing,
    cancel_grace: Option<Duration>,
    rss_limit: Option<u64>,
    stats_interval: Option<Duration>,
    blocked_threshold: Option<Duration>,
    forward_logs: Option<LevelFilter>,
    /// The worker configuration, encoded (or why it could not be).
    config: Option<Result<Arc<Vec<u8>>, String>>,
    _worker: PhantomData<fn() -> W>,
}

/// A builder can be kept and started again: each [`start`](Builder::start) starts a pool of
/// its own (a program that restarts its pool, say).
impl<W> Clone for Builder<W> {
    fn clone(&self) -> Self {
        Self {
            runtime: self.runtime.clone(),
            worker_runtime: self.worker_runtime.clone(),
            name: self.name.clone(),
            workers: self.workers,
            capacity: self.capacity,
            concurrency: self.concurrency,
            result_credit: self.result_credit,
            start_method: self.start_method,
            max_frame: self.max_frame,
            stop_timeout: self.stop_timeout,
            handshake_timeout: self.handshake_timeout,
            frame_timeout: self.frame_timeout,
            stop_backlog: self.stop_backlog,
            ignore_signals: self.ignore_signals,
            nice: self.nice,
            protocol_version: self.protocol_version,
            respawn: self.respawn,
            restart: self.restart,
            retries: self.retries,
            task_timeout: self.task_timeout,
            stall_grace: self.stall_grace,
            recycle_after: self.recycle_after,
            routing: self.routing,
            cancel_grace: self.cancel_grace,
            rss_limit: self.rss_limit,
            stats_interval: self.stats_interval,
            blocked_threshold: self.blocked_threshold,
            forward_logs: self.forward_logs,
            config: self.config.clone(),
            _worker: PhantomData,
        }
    }
}

impl<W> fmt::Debug for Builder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("workers", &self.workers)
            .field("capacity", &self.capacity)
            .field("concurrency", &self.concurrency)
            .field("result_credit", &self.result_credit)
            .field("start_method", &self.start_method)
            .field("max_frame", &self.max_frame)
            .field("stop_timeout", &self.stop_timeout)
            .field("respawn", &self.respawn)
            .field("retries", &self.retries)
            .field("task_timeout", &self.task_timeout)
            .finish_non_exhaustive()
    }
}

impl<W: Worker> Builder<W> {
    pub(crate) fn new(runtime: Arc<dyn Runtime>) -> Self {
        Self {
            runtime,
            worker_runtime: None,
            name: "pool".into(),
            workers: None,
            capacity: None,
            concurrency: 1,
            result_credit: 16,
            start_method: StartMethod::default(),
            max_frame: DEFAULT_MAX_FRAME,
            stop_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(30),
            frame_timeout: Duration::from_secs(60),
            stop_backlog: 256,
            ignore_signals: true,
            nice: WorkerNice::BelowParent(DEFAULT_NICE_BELOW_PARENT),
            protocol_version: PROTOCOL_VERSION,
            respawn: true,
            restart: RestartPolicy::default(),
            retries: 0,
            task_timeout: None,
            stall_grace: Duration::from_secs(1),
            recycle_after: None,
            routing: Routing::default(),
            cancel_grace: Some(Duration::from_secs(2)),
            rss_limit: None,
            stats_interval: Some(Duration::from_secs(1)),
            blocked_threshold: None,
            forward_logs: None,
            config: None,
            _worker: PhantomData,
        }
    }

    /// The pool's name, shown in worker process titles and logs. Default `"pool"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How many workers. Default: the number of CPUs available.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// How many unfinished tasks (queued in the worker or running) one worker may hold; past it
    /// `try_submit` fails with `Full` and `submit` waits. Default: twice the concurrency, so a
    /// worker always has its next task at hand.
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = Some(n);
        self
    }

    /// How many tasks one worker runs at once on its event loop. Default 1.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// How many outputs one worker may emit before the parent acknowledges them. Default 16.
    pub fn result_credit(mut self, n: usize) -> Self {
        self.result_credit = n;
        self
    }

    /// How workers are started. Default [`StartMethod::ReExec`].
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = method;
        self
    }

    /// The largest frame body accepted or sent, in bytes; checked before allocating. Tasks and
    /// outputs that encode larger are refused at the call. Default 16 MiB; at least 64 KiB.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How long a graceful [`stop`](super::Pool::stop) waits before killing workers that have not
    /// finished. Default 30 s.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// How long a starting worker may take to answer the handshake (its init hook included).
    /// Default 30 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How many outputs per worker a graceful [`stop`](super::Pool::stop) queues past the result
    /// credit, whether or not anyone reads them. Default 256.
    ///
    /// Once a stop begins each worker is granted this many more outputs at once, so that it can
    /// finish its tasks while nobody reads [`outputs`](super::Pool::outputs) (a program that calls
    /// `stop()` and only then reads). The parent then holds at most `result_credit + backlog`
    /// unread outputs per worker; a worker that needs more waits for the consumer, and is killed
    /// at the stop timeout if none comes. `0` keeps the result credit as the only bound.
    pub fn stop_backlog(mut self, backlog: usize) -> Self {
        self.stop_backlog = backlog;
        self
    }

    /// How long a frame from a worker may take to arrive once its first bytes have: a worker
    /// that stops half-way through a frame has broken the protocol, and its link ends with an
    /// error naming it (it is killed and replaced like any other dead worker). Default 60 s.
    ///
    /// A worker writes a frame from its event loop, so a worker whose loop blocks (CPU-bound
    /// code that never yields) in the middle of writing a large frame is treated the same way
    /// once this time passes.
    pub fn frame_timeout(mut self, timeout: Duration) -> Self {
        self.frame_timeout = timeout;
        self
    }

    /// Whether workers ignore SIGINT and SIGTERM, which a terminal or a service manager sends to
    /// the whole process group; the parent then stops them through the pool. Default `true`.
    pub fn ignore_signals(mut self, ignore: bool) -> Self {
        self.ignore_signals = ignore;
        self
    }

    /// Start worker processes at nice value `nice`, from 0 to 19 (lowest priority).
    ///
    /// Default: 10 below the parent (its nice value plus 10, at most 19). When CPU-bound
    /// workers fill every core, the parent's event loop still gets the CPU first and stays
    /// responsive, which is what the pool is for; idle CPU still goes to the workers. The cost:
    /// on a machine shared with other busy programs at normal priority, the workers get less of
    /// it than those. Thread workers are left as they are.
    pub fn worker_nice(mut self, nice: i32) -> Self {
        self.nice = WorkerNice::Exactly(nice);
        self
    }

    /// Start worker processes at the parent's own priority, not below it (see
    /// [`worker_nice`](Self::worker_nice)): for workers that must compete as equals with other
    /// programs, at the risk of a parent's loop that waits for the CPU behind them.
    pub fn worker_nice_as_parent(mut self) -> Self {
        self.nice = WorkerNice::AsParent;
        self
    }

    /// The runtime that fork and thread workers build for themselves. Default: the parent's.
    /// (Re-executed workers use the runtime named in their `init` entry.)
    pub fn worker_runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.worker_runtime = Some(runtime);
        self
    }

    /// Whether a worker that dies while the pool runs is replaced by a new one with the same
    /// number. Default `true`. Meanwhile targeted submissions to it wait for the replacement.
    pub fn respawn(mut self, respawn: bool) -> Self {
        self.respawn = respawn;
        self
    }

    /// Replace one worker number at most `max` times within `window` after quick failures
    /// (deaths before it ended a task or served [`restart_healthy_after`](Self::restart_healthy_after));
    /// past that it is given up (logged) for [`restart_retry_after`](Self::restart_retry_after),
    /// so a worker that crashes at start-up cannot spin. A worker that served before it died
    /// is replaced at once and clears the count. Default 5 within 60 s.
    pub fn restart_limit(mut self, max: u32, window: Duration) -> Self {
        self.restart.max_restarts = max;
        self.restart.window = window;
        self
    }

    /// The wait before the second relaunch within the window, doubled for each further one up
    /// to `max` (the first relaunch is immediate). Default 100 ms up to 5 s.
    pub fn restart_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.restart.initial = initial;
        self.restart.max_delay = max;
        self
    }

    /// A worker that dies after serving this long (or after ending a task) did not fail
    /// quickly: it is replaced at once and its count of quick failures starts again. Default 1 s.
    pub fn restart_healthy_after(mut self, served: Duration) -> Self {
        self.restart.healthy_after = served;
        self
    }

    /// How long a given-up worker number stays dead before it is tried again (with a clean
    /// count); [`Pool::revive`](super::Pool::revive) brings it back sooner. Default 60 s.
    pub fn restart_retry_after(mut self, wait: Duration) -> Self {
        self.restart.retry_after = wait;
        self
    }

    /// Send a task lost with its worker again, up to `n` more times, to a live worker: at
    /// least once delivery for tasks that are safe to repeat. Default 0 (a lost task fails
    /// with [`TaskError::Lost`](crate::TaskError::Lost)).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Cancel a task that runs longer than `timeout` inside its worker; it ends with
    /// [`TaskError::TimedOut`](crate::TaskError::TimedOut) and the worker goes on. A worker
    /// whose event loop does not turn for `timeout` plus the stall grace while it holds tasks
    /// (CPU-bound code that never yields) is killed and replaced; only its tasks are lost.
    /// Default: no timeout.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How much longer than the task timeout a worker's loop may stay blocked before the worker
    /// is killed. Default 1 s.
    pub fn stall_grace(mut self, grace: Duration) -> Self {
        self.stall_grace = grace;
        self
    }

    /// Retire a worker after it has ended `tasks` tasks: it takes no new tasks, finishes those
    /// it holds, and a replacement takes its number. No task is lost. Default: never.
    pub fn recycle_after_tasks(mut self, tasks: u64) -> Self {
        self.recycle_after = Some(tasks);
        self
    }

    /// How untargeted submissions ([`submit`](super::Pool::submit), [`call`](super::Pool::call))
    /// pick their worker. Default [`Routing::LeastLoaded`]: the live worker holding the fewest
    /// unfinished tasks, so a short task never waits behind a long one while another worker has
    /// room. [`Routing::RoundRobin`] is Looppool's strict rotation (equal shares, but a task may
    /// queue behind a busy worker).
    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// How long a worker has to drop a cancelled task ([`TaskHandle::abort`](super::TaskHandle::abort),
    /// a dropped [`call`](super::Pool::call), an expired deadline) before it is killed and
    /// replaced; the other tasks it held are then sent to other workers, whatever their
    /// [`retries`](Self::retries), since they are not at fault. Default 2 s.
    ///
    /// A worker drops a cancelled task at its next await, at once for async code; the kill is
    /// for CPU-bound code that never yields, which is the work a pool like this exists for.
    /// `None` never kills: a cancelled task that never yields then keeps its worker busy (and a
    /// stop waiting) until it ends by itself, and its outputs are discarded.
    pub fn cancel_grace(mut self, grace: Option<Duration>) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Retire a worker process (as [`recycle_after_tasks`](Self::recycle_after_tasks) does)
    /// once its resident memory passes `bytes`, checked at least once a second. Default: never.
    pub fn recycle_above_rss(mut self, bytes: u64) -> Self {
        self.rss_limit = Some(bytes);
        self
    }

    /// How often each worker reports its CPU use, memory, loop lag and task counts (see
    /// [`Pool::stats`](super::Pool::stats) and [`metric_names`](crate::metric_names)); `None` turns the reports
    /// off. Default 1 s; at least 10 ms.
    pub fn stats_interval(mut self, every: Option<Duration>) -> Self {
        self.stats_interval = every;
        self
    }

    /// Report a worker whose event loop has not turned for longer than `threshold`: a
    /// `tracing` warning in the parent naming the worker and the tasks it was running, and the
    /// `looppool_worker_blocked_total` counter. The worker is left alone (see
    /// [`task_timeout`](Self::task_timeout) to kill it). Workers then send a heartbeat every
    /// quarter of the threshold (between 10 ms and 500 ms). Default: off, since CPU-bound tasks
    /// that block their worker's loop are what many pools are for; at least 40 ms.
    pub fn blocked_threshold(mut self, threshold: Duration) -> Self {
        self.blocked_threshold = Some(threshold);
        self
    }

    /// A configuration for the workers: encoded once here, and handed to every worker process
    /// in its handshake, the first ones and every replacement alike (the same bytes each time),
    /// where [`Context::config`](crate::Context::config) decodes it in `init`. This is how a
    /// re-executed worker learns what the parent computed or was told (a model path, a database
    /// URL, a table). With the handshake it must fit the frame limit
    /// ([`max_frame`](Self::max_frame), and 64 MiB at most); `start` fails with
    /// [`Error::Config`](crate::Error::Config)
    /// if it does not, or if it cannot be encoded.
    pub fn config<C: serde::Serialize>(mut self, config: &C) -> Self {
        self.config = Some(
            postcard::to_stdvec(config)
                .map(Arc::new)
                .map_err(|e| format!("cannot encode the worker configuration: {e}")),
        );
        self
    }

    /// The most verbose `tracing` level a worker forwards to the parent, where its events are
    /// emitted again under their worker-side target, so the parent's filters apply to them as
    /// to its own events, with fields `pool`, `worker` and `task` (the task id, or `-` outside any
    /// task). A worker's panic message arrives under the target `looppool::panic`. Default: the parent's own maximum level when the pool starts
    /// ([`LevelFilter::current`]); [`LevelFilter::OFF`] turns forwarding off.
    pub fn forward_logs(mut self, level: LevelFilter) -> Self {
        self.forward_logs = Some(level);
        self
    }

    /// Announce another protocol version in the handshake, to test the refusal.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn protocol_version(mut self, version: u32) -> Self {
        self.protocol_version = version;
        self
    }
}
