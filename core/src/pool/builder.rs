//! Configuring and starting a pool.

use super::link::{self, HandshakeError};
use super::respawn::{Launch, Linked, Respawner};
use super::shared::{Inner, Settings, Shared, WorkerEntry};
use super::Pool;
use crate::error::Error;
use crate::launch::{
    launch_all, launch_one, Killer, LaunchOptions, Launched, StartMethod, LINK_FD_VAR,
};
use crate::protocol::{DEFAULT_MAX_FRAME, PROTOCOL_VERSION};
use crate::runtime::Runtime;
use crate::state::PoolState;
use crate::state::RestartPolicy;
use crate::worker::{filter_code, Handshake, Worker, HELLO_LIMIT};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tracing::level_filters::LevelFilter;

/// Configures a [`Pool`]. Made by [`Pool::builder`] (or an adapter's `builder()`).
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
    nice: Option<i32>,
    protocol_version: u32,
    respawn: bool,
    restart: RestartPolicy,
    retries: u32,
    task_timeout: Option<Duration>,
    stall_grace: Duration,
    recycle_after: Option<u64>,
    rss_limit: Option<u64>,
    stats_interval: Option<Duration>,
    blocked_threshold: Option<Duration>,
    forward_logs: Option<LevelFilter>,
    _worker: PhantomData<fn() -> W>,
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

/// Workers to kill and reap when dropped (unless emptied first).
struct KillOnDrop(Vec<Killer>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for killer in &self.0 {
            killer.kill_and_reap_blocking();
        }
    }
}

/// Everything a launch needs, shared by the start and every later replacement.
struct LaunchPlan {
    method: StartMethod,
    opts: LaunchOptions,
    hello: Handshake,
    protocol_version: u32,
    handshake_timeout: Duration,
    runtime: Arc<dyn Runtime>,
}

impl LaunchPlan {
    /// Wraps a launched worker's link and runs the handshake, granting `credit` outputs.
    async fn link(
        &self,
        worker: usize,
        launched: Launched,
        credit: usize,
    ) -> Result<Linked, Error> {
        let fd = launched.parent_fd();
        let io = match launched.transport.into_io(&*self.runtime) {
            Ok(io) => io,
            Err(source) => {
                launched.killer.kill_and_reap_blocking();
                return Err(Error::Launch { worker, source });
            }
        };
        let hello = Handshake {
            worker,
            result_credit: credit,
            ..self.hello.clone()
        };
        let linked = link::handshake(
            io,
            &hello,
            self.protocol_version,
            self.handshake_timeout,
            &*self.runtime,
        )
        .await;
        match linked {
            Ok((reader, writer, pid)) => Ok(Linked {
                reader,
                writer,
                pid,
                fd,
                killer: launched.killer,
                reaper: launched.reaper,
            }),
            Err(e) => {
                let exit = launched.killer.kill_and_reap_blocking();
                Err(match e {
                    HandshakeError::Protocol(reason) => Error::Handshake { worker, reason },
                    HandshakeError::Init(message) => Error::Init { worker, message },
                    HandshakeError::Closed => Error::Handshake {
                        worker,
                        reason: match exit {
                            Some(exit) => format!(
                                "the worker process ended ({exit}) before answering the \
                                 handshake: its init hook ended the process, or the program's \
                                 main does not call looppool's init() first thing"
                            ),
                            None => "the worker thread ended before answering the handshake".into(),
                        },
                    },
                })
            }
        }
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
            nice: None,
            protocol_version: PROTOCOL_VERSION,
            respawn: true,
            restart: RestartPolicy::default(),
            retries: 0,
            task_timeout: None,
            stall_grace: Duration::from_secs(1),
            recycle_after: None,
            rss_limit: None,
            stats_interval: Some(Duration::from_secs(1)),
            blocked_threshold: None,
            forward_logs: None,
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

    /// How long a graceful [`stop`](Pool::stop) waits before killing workers that have not
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

    /// How many outputs per worker a graceful [`stop`](Pool::stop) queues past the result
    /// credit, whether or not anyone reads them. Default 256.
    ///
    /// Once a stop begins each worker is granted this many more outputs at once, so that it can
    /// finish its tasks while nobody reads [`outputs`](Pool::outputs) (a program that calls
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

    /// Start worker processes with a lower CPU priority: nice value `nice`, from 1 (slightly
    /// lower) to 19 (lowest). When CPU-bound workers would otherwise fill every core, the
    /// parent's event loop then gets the CPU first and stays responsive. Default: the parent's
    /// priority. Thread workers are left as they are.
    pub fn worker_nice(mut self, nice: i32) -> Self {
        self.nice = Some(nice);
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
    /// count); [`Pool::revive`] brings it back sooner. Default 60 s.
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

    /// Retire a worker process (as [`recycle_after_tasks`](Self::recycle_after_tasks) does)
    /// once its resident memory passes `bytes`, checked at least once a second. Default: never.
    pub fn recycle_above_rss(mut self, bytes: u64) -> Self {
        self.rss_limit = Some(bytes);
        self
    }

    /// How often each worker reports its CPU use, memory, loop lag and task counts (see
    /// [`Pool::stats`] and [`metric_names`](crate::metric_names)); `None` turns the reports
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

    /// The most verbose `tracing` level a worker forwards to the parent, where its events are
    /// emitted again (target `looppool::worker`) with the pool, worker number and task id
    /// attached. Default: the parent's own maximum level when the pool starts
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

    fn validate(&self) -> Result<usize, Error> {
        let workers = match self.workers {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::Config(what.into()))
            }
        };
        check(workers >= 1, "a pool needs at least one worker")?;
        check(workers <= u32::MAX as usize, "too many workers")?;
        check(self.concurrency >= 1, "concurrency must be at least 1")?;
        check(self.capacity != Some(0), "capacity must be at least 1")?;
        check(self.result_credit >= 1, "result credit must be at least 1")?;
        check(
            self.result_credit <= u32::MAX as usize,
            "result credit is too large",
        )?;
        check(
            (HELLO_LIMIT..=u32::MAX as usize).contains(&self.max_frame),
            "the frame limit must be between 64 KiB and 4 GiB",
        )?;
        check(
            self.stats_interval
                .is_none_or(|d| d >= Duration::from_millis(10)),
            "the stats interval must be at least 10 ms",
        )?;
        check(
            self.blocked_threshold
                .is_none_or(|d| d >= Duration::from_millis(40)),
            "the blocked threshold must be at least 40 ms",
        )?;
        check(
            self.frame_timeout >= Duration::from_millis(10),
            "the frame timeout must be at least 10 ms",
        )?;
        check(
            self.nice.is_none_or(|n| (0..=19).contains(&n)),
            "the workers' nice value must be between 0 and 19",
        )?;
        check(
            self.task_timeout != Some(Duration::ZERO),
            "the task timeout must be positive",
        )?;
        check(
            std::env::var_os(LINK_FD_VAR).is_none(),
            "this process was started as a looppool worker, but its main did not call looppool's \
             init() before building a pool",
        )?;
        Ok(workers)
    }

    /// Launches the workers, waits until each has run its init hook, and returns the pool.
    ///
    /// If any worker fails to launch, to handshake or to initialise, every worker already
    /// launched is killed and the first failure is returned.
    pub async fn start(self) -> Result<Pool<W>, Error> {
        let n = self.validate()?;
        let capacity = self.capacity.unwrap_or(self.concurrency.saturating_mul(2));
        // Heartbeats matter to the stall watchdog (which runs with a task timeout) and to
        // blocked-loop reports; a quarter of the tighter limit keeps either from firing early.
        let stall_limit = self.task_timeout.map(|t| t + self.stall_grace);
        let heartbeat = [stall_limit, self.blocked_threshold]
            .into_iter()
            .flatten()
            .min()
            .map(|l| (l / 4).clamp(Duration::from_millis(10), Duration::from_millis(500)));
        let log_level = filter_code(self.forward_logs.unwrap_or_else(LevelFilter::current));
        let plan = Arc::new(LaunchPlan {
            method: self.start_method,
            opts: LaunchOptions {
                pool_name: self.name.clone(),
                ignore_signals: self.ignore_signals,
                nice: self.nice,
                worker_runtime: self
                    .worker_runtime
                    .clone()
                    .unwrap_or_else(|| self.runtime.clone()),
            },
            hello: Handshake {
                worker: 0,
                pool_size: n,
                concurrency: self.concurrency,
                result_credit: self.result_credit,
                max_frame: self.max_frame,
                task_timeout: self.task_timeout,
                heartbeat,
                stats: self.stats_interval,
                log_level,
                own_process: self.start_method != StartMethod::Thread,
                pool_name: self.name.clone(),
                worker_name: W::name().to_string(),
            },
            protocol_version: self.protocol_version,
            handshake_timeout: self.handshake_timeout,
            runtime: self.runtime.clone(),
        });

        // Kills and reaps every worker launched so far if the start fails, or if its future is
        // dropped before it completes: no process outlives a start that did not give a pool.
        let mut launching = KillOnDrop(Vec::with_capacity(n));
        let launched = launch_all::<W>(plan.method, n, &plan.opts, &mut launching.0).await?;
        let handshakes = launched
            .into_iter()
            .enumerate()
            .map(|(worker, l)| plan.link(worker, l, self.result_credit));
        let mut links = Vec::with_capacity(n);
        for result in futures_util::future::join_all(handshakes).await {
            links.push(result?);
        }
        // The pool owns them now.
        launching.0.clear();

        let respawner = self.respawn.then(|| {
            let plan = plan.clone();
            let launch: Launch = Box::new(move |worker, link_fds, credit, spawned| {
                let plan = plan.clone();
                Box::pin(async move {
                    let launched =
                        launch_one::<W>(plan.method, worker, &plan.opts, &link_fds).await?;
                    spawned(launched.killer.clone());
                    plan.link(worker, launched, credit).await
                })
            });
            Respawner { launch }
        });
        let entries = links
            .iter()
            .map(|l| WorkerEntry {
                killer: Some(l.killer.clone()),
                pid: Some(l.pid),
                link_fd: l.fd,
                ..WorkerEntry::default()
            })
            .collect();
        let mut inner = Inner::new(PoolState::new(n, capacity, self.result_credit), entries);
        inner
            .state
            .set_restart_policy(self.respawn.then_some(self.restart));
        inner.state.set_stop_backlog(self.stop_backlog);
        inner.state.set_recycle_after(self.recycle_after);
        let now = self.runtime.now();
        for worker in 0..n {
            inner
                .state
                .handle_ready(worker, now)
                .expect("a fresh worker's first handshake");
        }
        let settings = Settings {
            name: self.name,
            max_frame: self.max_frame,
            stop_timeout: self.stop_timeout,
            retries: self.retries,
            rss_limit: self.rss_limit,
            stall_limit,
            blocked_threshold: self.blocked_threshold,
            concurrency: self.concurrency,
            monitor_every: heartbeat.unwrap_or(Duration::from_secs(1)),
            frame_timeout: self.frame_timeout,
            processes: self.start_method != StartMethod::Thread,
        };
        let shared = Arc::new(Shared::new(inner, self.runtime, settings, respawner));
        for (worker, l) in links.into_iter().enumerate() {
            link::spawn(&shared, worker, 0, l.reader, l.writer, l.killer, l.reaper);
        }
        tracing::debug!(pool = %shared.settings.name, workers = n, "looppool started");
        Ok(Pool::from_shared(shared))
    }
}
