//! The parent's handle on a running pool.

mod builder;
mod call;
mod clock;
mod decisions;
mod ending;
mod frames;
mod handle;
mod incarnation;
mod link;
mod monitor;
mod outputs;
mod relay;
#[cfg(feature = "tower")]
mod service;
mod shared;
mod stats;
mod stop;
mod stream;
mod supervisor;
mod write_now;

pub use builder::Builder;
pub use handle::{CancelSink, Delivery, MemberTask, TaskHandle};
pub use outputs::{OutputSender, Outputs};
#[cfg(feature = "tower")]
pub use service::ServiceFuture;
pub use stats::{names as metric_names, PoolStats, WorkerStats};
pub use stop::Stopped;
pub use stream::CallStream;

use crate::error::SubmitError;
use crate::runtime::Runtime;
use crate::state::{Phase, Refusal, Route};
use crate::worker::Worker;
use call::Want;
use shared::Shared;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// A pool of worker processes, each running a `W` on its own event loop.
///
/// The handle is cheap to clone (two reference counts) and `Send + Sync`: give each task,
/// request handler or service a clone (an axum `State`, say). All clones drive the same pool;
/// all methods take `&self`. Dropping the last clone without [`stop`](Self::stop) kills the
/// workers at once and fails their tasks as lost: no worker process outlives its pool.
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
/// let pool = Pool::<Doubler>::builder(looppool_tokio::runtime())
///     // Worker threads: a doctest's `main` does not call `init`, which re-executed workers need.
///     .start_method(StartMethod::Thread)
///     .workers(2)
///     .start()
///     .await?;
/// // Request-reply: a task and its first output.
/// assert_eq!(pool.call(21).await?, 42);
/// // Or submit, and read outputs as they come, each tagged with its worker and task.
/// let handle = pool.submit(5).await?;
/// let id = handle.id();
/// handle.await?;
/// let delivery = pool.outputs().recv().await.expect("an output");
/// assert_eq!((*delivery, delivery.task_id()), (10, Some(id)));
/// drop(delivery);
/// assert!(pool.stop().await.is_graceful());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # };
/// # run.await.expect("the example runs");
/// # }));
/// ```
pub struct Pool<W: Worker> {
    shared: Arc<Shared<W::Output>>,
    /// Kills the workers when the last clone goes.
    _owner: Arc<stop::Owner<W::Output>>,
    _worker: PhantomData<fn() -> W>,
}

impl<W: Worker> Clone for Pool<W> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _owner: self._owner.clone(),
            _worker: PhantomData,
        }
    }
}

impl<W: Worker> fmt::Debug for Pool<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.shared.lock();
        let workers: Vec<_> = (0..inner.state.size())
            .map(|k| {
                let s = &inner.state;
                format!(
                    "{k}: {:?} gen {} holding {} unacked {}",
                    s.status(k),
                    s.generation(k),
                    s.held(k),
                    s.unacked(k)
                )
            })
            .collect();
        f.debug_struct("Pool")
            .field("name", &self.shared.settings.name)
            .field("phase", &inner.state.phase())
            .field("workers", &workers)
            .field("replacements_under_way", &inner.state.launches_under_way())
            .field("tasks_pending", &inner.pending.len())
            .finish()
    }
}

impl<W: Worker> Pool<W> {
    /// Configures a pool whose parent side runs on `runtime`. Adapters offer a shorter form
    /// (`looppool_tokio::builder::<W>()`).
    pub fn builder(runtime: Arc<dyn Runtime>) -> Builder<W> {
        Builder::new(runtime)
    }

    fn from_shared(shared: Arc<Shared<W::Output>>) -> Self {
        Self {
            _owner: Arc::new(stop::Owner {
                shared: shared.clone(),
            }),
            shared,
            _worker: PhantomData,
        }
    }

    /// The number of workers (live or not).
    pub fn size(&self) -> usize {
        self.shared.lanes.len()
    }

    /// How many unfinished tasks one worker holds at most (running and queued in it).
    pub fn capacity(&self) -> usize {
        self.shared.lock().state.capacity()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.shared.settings.name
    }

    /// Worker `worker`'s process id (the parent's own for thread workers), while it is alive.
    pub fn pid(&self, worker: usize) -> Option<u32> {
        let inner = self.shared.lock();
        let entry = inner.workers.get(worker)?;
        entry.killer.as_ref()?;
        entry.pid
    }

    /// A snapshot of every worker: resource use and loop lag as each last reported them, and
    /// the parent's own counts of tasks, losses, latencies and blocked loops.
    ///
    /// The same figures go to the `metrics` facade as they arrive (see [`metric_names`]), so
    /// any installed recorder exports them; this needs none.
    pub fn stats(&self) -> PoolStats {
        let now = self.shared.runtime.now();
        let inner = self.shared.lock();
        let workers = (0..inner.state.size())
            .map(|k| {
                let s = &inner.state;
                let pid = inner.workers[k].killer.as_ref().and(inner.workers[k].pid);
                let mut stats = inner.workers[k].account.snapshot(
                    k,
                    pid,
                    s.status(k),
                    s.held(k),
                    s.unacked(k),
                    now,
                );
                stats.given_up_until = s.given_up_until(k);
                stats
            })
            .collect();
        PoolStats {
            name: self.shared.settings.name.clone(),
            workers,
        }
    }

    /// The stream of outputs that are not replies to [`call`](Self::call).
    pub fn outputs(&self) -> Outputs<W::Output> {
        self.shared.outputs.subscribe()
    }

    /// Sends `task` to the worker the pool's [`Routing`](crate::state::Routing) picks
    /// ([`Builder::routing`]): by default the live worker holding the fewest unfinished tasks,
    /// waiting only while every worker is full.
    pub async fn submit(
        &self,
        task: W::Task,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        Ok(self
            .place(Route::Any, task, Want::Outputs, true, None)
            .await?
            .0)
    }

    /// Like [`submit`](Self::submit), or hands `task` back at once in [`SubmitError::Full`]
    /// if it would have to wait: by default only when every worker holds its capacity of
    /// unfinished tasks.
    pub fn try_submit(&self, task: W::Task) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        self.try_place(Route::Any, task)
    }

    /// Sends `task` to worker `worker`, waiting while it is full or being replaced; refused
    /// with [`SubmitError::Unroutable`] if it has exited for good.
    pub async fn submit_to(
        &self,
        worker: usize,
        task: W::Task,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        Ok(self
            .place(Route::Worker(worker), task, Want::Outputs, true, None)
            .await?
            .0)
    }

    /// Sends `task` to worker `worker`, or hands it back at once in [`SubmitError::Full`] if it
    /// is full or being replaced.
    pub fn try_submit_to(
        &self,
        worker: usize,
        task: W::Task,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        self.try_place(Route::Worker(worker), task)
    }

    /// Sends `task` to the worker number `key` hashes to, waiting while that worker is full or
    /// being replaced: tasks with equal keys always reach the same worker number (sharded,
    /// stateful workers), whichever incarnation serves it. Keys are hashed with a hasher fixed
    /// for the program's build, so a key maps to the same number in every pool of this size.
    pub async fn submit_keyed<K: std::hash::Hash + ?Sized>(
        &self,
        key: &K,
        task: W::Task,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        Ok(self
            .place(key_route(key), task, Want::Outputs, true, None)
            .await?
            .0)
    }

    /// Like [`submit_keyed`](Self::submit_keyed), or hands `task` back at once in
    /// [`SubmitError::Full`] if that worker is full or being replaced.
    pub fn try_submit_keyed<K: std::hash::Hash + ?Sized>(
        &self,
        key: &K,
        task: W::Task,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        self.try_place(key_route(key), task)
    }

    /// Sends one copy of `task` to every live worker, each behind whatever was sent to that
    /// worker before, waiting until every live worker has room. Returns one handle per copy,
    /// in worker order. Workers that start later (replacements) do not receive it; see
    /// [`broadcast_sticky`](Self::broadcast_sticky).
    pub async fn broadcast(
        &self,
        task: W::Task,
    ) -> Result<Vec<TaskHandle<W::Error>>, SubmitError<W::Task>> {
        self.broadcast_inner(None, task).await
    }

    /// Like [`broadcast`](Self::broadcast), and also remembered under `key` (replacing any
    /// earlier sticky broadcast with that key): every replacement worker receives the
    /// remembered broadcasts, in the order they were last set, before its first task. Stateful
    /// workers (a lookup table, a configuration) thus come back in the same state.
    pub async fn broadcast_sticky(
        &self,
        key: &str,
        task: W::Task,
    ) -> Result<Vec<TaskHandle<W::Error>>, SubmitError<W::Task>> {
        self.broadcast_inner(Some(key), task).await
    }

    async fn broadcast_inner(
        &self,
        key: Option<&str>,
        task: W::Task,
    ) -> Result<Vec<TaskHandle<W::Error>>, SubmitError<W::Task>> {
        let payload = match self.encode(&task) {
            Ok(p) => p,
            Err(e) => return Err(SubmitError::Encode(task, e)),
        };
        loop {
            let listener = {
                let mut inner = self.shared.lock();
                let placed = match key {
                    Some(key) => inner.state.broadcast_sticky(key, payload.clone()),
                    None => inner.state.broadcast(payload.clone()),
                };
                match placed {
                    Ok(copies) => {
                        let handles = copies
                            .into_iter()
                            .map(|(worker, id)| {
                                let (pending, (end, _)) = self.pending(Want::Outputs, None);
                                pending.done.sent_again();
                                inner.pending.insert(id, pending);
                                self.log_placed(worker, id, "broadcast copy placed");
                                TaskHandle::new(id, worker, end, self.canceller())
                            })
                            .collect::<Vec<_>>();
                        drop(inner);
                        for h in &handles {
                            self.shared.wake_writer(h.worker());
                        }
                        return Ok(handles);
                    }
                    Err(Refusal::Full { worker } | Refusal::Replacing { worker }) => {
                        self.shared.lanes[worker].room.listen()
                    }
                    Err(refusal) => return Err(SubmitError::from_refusal(task, refusal)),
                }
            };
            listener.await;
        }
    }

    /// Kills worker `worker` now (SIGKILL; for a thread worker, its link is closed). Its tasks
    /// end as lost, and the other workers go on.
    pub fn kill_worker(&self, worker: usize) {
        let killer = {
            let mut inner = self.shared.lock();
            let killer = inner.workers.get(worker).and_then(|w| w.killer.clone());
            if killer.is_some() {
                inner.workers[worker].kill_cause = Some("killed by Pool::kill_worker".into());
            }
            killer
        };
        if let Some(killer) = killer {
            killer.kill();
        }
    }

    /// Brings worker number `worker` back now if it was given up after too many quick
    /// failures (see [`Builder::restart_limit`]); returns whether a replacement is on its way.
    /// A given-up number is otherwise tried again after
    /// [`Builder::restart_retry_after`]; [`WorkerStats::given_up_until`] says when.
    pub fn revive(&self, worker: usize) -> bool {
        worker < self.size() && supervisor::revive(&self.shared, worker)
    }

    /// Whether a stop has begun.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().state.phase() != Phase::Running
    }
}

/// The route of a keyed submission: the key's hash, with a hasher that does not change between
/// runs of one build (std's `DefaultHasher::new`, SipHash with fixed keys).
fn key_route<K: std::hash::Hash + ?Sized>(key: &K) -> Route {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    Route::Key(hasher.finish())
}
