//! The state every part of a running pool shares: the sans-IO state under one lock, the task
//! handles waiting for an end, and the events that wake writers, submitters and `stop`.
//!
//! Lock discipline: the lock is never held across an await, and nothing that can take the lock
//! again (dropping a [`Delivery`], which acknowledges it) happens while it is held. Events are
//! notified after the state change they announce, and waiters register their listener while
//! holding the lock, so no wake-up is lost.

use super::handle::Delivery;
use super::respawn::{self, Respawner};
use super::stats::{Account, Instruments};
use crate::error::{Exit, TaskError};
use crate::launch::Killer;
use crate::runtime::Runtime;
use crate::state::{Departure, IdMap, Phase, PoolState, Refusal, Restart, Route, TaskId};
use event_listener::Event;
use futures_channel::oneshot;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// An encoded task, shared by the pending entry, the state and the writer without copying.
pub(crate) type Payload = Arc<Vec<u8>>;

/// A task handle's sending side, and what a retry needs.
pub(crate) struct Pending<O> {
    pub(crate) done: oneshot::Sender<Result<(), TaskError>>,
    /// Where the outputs go if it was a request-reply call.
    pub(crate) reply: Option<oneshot::Sender<Delivery<O>>>,
    /// A request-reply call: outputs after its reply are acknowledged and discarded.
    pub(crate) call: bool,
    /// The encoded task, kept for retries.
    pub(crate) payload: Payload,
    /// How many times it was sent, shared with its handle.
    pub(crate) attempts: Arc<AtomicU32>,
    /// When it was submitted, for its latency.
    pub(crate) since: Instant,
}

/// What the driver holds for one worker number: its current process and link, and what it
/// knows of it. Its share of the pool's bookkeeping is in the state.
#[derive(Default)]
pub(crate) struct WorkerEntry {
    /// Kills the current incarnation; `None` once it exited.
    pub(crate) killer: Option<Killer>,
    /// A replacement being launched (before its handshake), to kill if the pool stops.
    pub(crate) launching: Option<Killer>,
    /// How its last incarnation ended.
    pub(crate) exit: Option<Exit>,
    pub(crate) pid: Option<u32>,
    /// Why the parent killed it, for the tasks it loses.
    pub(crate) kill_cause: Option<String>,
    /// The parent's end of its live link, as a descriptor, for forked replacements to close.
    pub(crate) link_fd: Option<std::os::fd::RawFd>,
    /// What the parent knows about it, for statistics.
    pub(crate) account: Account,
}

pub(crate) struct Inner<O> {
    pub(crate) state: PoolState<Payload>,
    pub(crate) pending: IdMap<Pending<O>>,
    /// One entry per worker number.
    pub(crate) workers: Vec<WorkerEntry>,
    /// Workers killed at the stop deadline or by `kill()`, in the order they were killed.
    pub(crate) killed: Vec<usize>,
    /// Lost tasks on their way to another worker: a stop waits for them to settle too.
    pub(crate) retrying: usize,
}

impl<O> Inner<O> {
    pub(crate) fn new(state: PoolState<Payload>, workers: Vec<WorkerEntry>) -> Self {
        Self {
            state,
            pending: IdMap::default(),
            workers,
            killed: Vec::new(),
            retrying: 0,
        }
    }
}

/// Settings the running pool consults.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) max_frame: usize,
    pub(crate) stop_timeout: Duration,
    /// Times a lost task is sent again.
    pub(crate) retries: u32,
    /// Replace a worker whose resident memory passes this many bytes.
    pub(crate) rss_limit: Option<u64>,
    /// Kill a worker whose loop has not turned for this long while it holds tasks.
    pub(crate) stall_limit: Option<Duration>,
    /// Report a worker whose loop has not turned for this long.
    pub(crate) blocked_threshold: Option<Duration>,
    /// How often a link's monitor looks at its worker.
    pub(crate) monitor_every: Duration,
    /// How long a begun frame may take to arrive whole.
    pub(crate) frame_timeout: Duration,
    /// Tasks one worker runs at once.
    pub(crate) concurrency: usize,
    /// Whether workers are processes (not threads), so they have their own pid and memory.
    pub(crate) processes: bool,
}

pub(crate) struct Shared<O> {
    inner: Mutex<Inner<O>>,
    /// Per worker: room for a task was made, or the worker exited or came back, or the pool
    /// began stopping.
    pub(crate) room: Vec<Event>,
    /// Per worker: something is waiting to be written.
    pub(crate) writers: Vec<Event>,
    /// A worker exited, or a replacement settled.
    pub(crate) exited: Event,
    pub(crate) outputs: async_channel::Sender<Delivery<O>>,
    pub(crate) outputs_rx: async_channel::Receiver<Delivery<O>>,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) settings: Settings,
    pub(crate) respawner: Option<Respawner>,
    /// Per worker: when a frame last arrived, in microseconds since `base`.
    pub(crate) last_seen: Vec<AtomicU64>,
    pub(crate) base: Instant,
    /// Per worker: its metric handles.
    pub(crate) instruments: Vec<Instruments>,
}

impl<O> Shared<O> {
    pub(crate) fn new(
        inner: Inner<O>,
        runtime: Arc<dyn Runtime>,
        settings: Settings,
        respawner: Option<Respawner>,
    ) -> Self {
        let n = inner.state.size();
        let (outputs, outputs_rx) = async_channel::unbounded();
        let base = runtime.now();
        super::stats::describe();
        let instruments = (0..n)
            .map(|w| Instruments::new(&settings.name, w))
            .collect();
        Self {
            inner: Mutex::new(inner),
            room: (0..n).map(|_| Event::new()).collect(),
            writers: (0..n).map(|_| Event::new()).collect(),
            exited: Event::new(),
            outputs,
            outputs_rx,
            runtime,
            settings,
            respawner,
            last_seen: (0..n).map(|_| AtomicU64::new(0)).collect(),
            base,
            instruments,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<O>> {
        // A panic while holding the lock leaves the bookkeeping as consistent as any single
        // step of it; carrying on beats poisoning every later call.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the writer of `worker`'s link. Every listener is woken, not one: a writer of a
    /// dead incarnation may still hold an already-notified listener on the same event, and
    /// `notify(1)` would count that one and leave the current writer asleep.
    pub(crate) fn wake_writer(&self, worker: usize) {
        self.writers[worker].notify(usize::MAX);
    }

    /// Wakes everything that waits on the pool's phase: submitters and writers of every worker.
    pub(crate) fn wake_all(&self) {
        for e in self.room.iter().chain(&self.writers) {
            e.notify(usize::MAX);
        }
        self.exited.notify(usize::MAX);
    }

    /// Records that a frame from `worker` arrived now.
    pub(crate) fn seen(&self, worker: usize) {
        let micros = self
            .runtime
            .now()
            .saturating_duration_since(self.base)
            .as_micros() as u64;
        self.last_seen[worker].store(micros, Ordering::Relaxed);
    }

    /// How long ago a frame from `worker` arrived.
    pub(crate) fn silent_for(&self, worker: usize) -> Duration {
        let now = self.runtime.now().saturating_duration_since(self.base);
        now.saturating_sub(Duration::from_micros(
            self.last_seen[worker].load(Ordering::Relaxed),
        ))
    }

    /// Kills worker `worker`'s incarnation `generation` from the parent's side, for `cause`.
    pub(crate) fn kill_for(&self, worker: usize, generation: u64, cause: String) {
        let killer = {
            let mut inner = self.lock();
            if inner.state.generation(worker) != generation {
                return;
            }
            inner.workers[worker].kill_cause = Some(cause);
            inner.workers[worker].killer.clone()
        };
        if let Some(killer) = killer {
            killer.kill();
        }
    }

    /// Places a task for `route` (under a new id, or under `retry`'s own id), waiting while the
    /// chosen worker is full or being replaced if `wait`. On refusal the pending entry is
    /// handed back.
    pub(crate) async fn place(
        &self,
        route: Route,
        retry: Option<TaskId>,
        pending: Pending<O>,
        wait: bool,
    ) -> Result<(usize, TaskId), (Refusal, Pending<O>)> {
        loop {
            let listener = {
                let mut inner = self.lock();
                let payload = pending.payload.clone();
                let placed = match retry {
                    Some(id) => inner
                        .state
                        .resubmit(route, id, payload)
                        .map(|worker| (worker, id)),
                    None => inner.state.submit(route, payload),
                };
                match placed {
                    Ok((worker, id)) => {
                        pending.attempts.fetch_add(1, Ordering::Relaxed);
                        inner.pending.insert(id, pending);
                        drop(inner);
                        self.wake_writer(worker);
                        return Ok((worker, id));
                    }
                    Err(Refusal::Full { worker } | Refusal::Replacing { worker }) if wait => {
                        self.room[worker].listen()
                    }
                    Err(refusal) => return Err((refusal, pending)),
                }
            };
            listener.await;
        }
    }
}

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    /// Worker `worker` (incarnation `generation`) is gone: its tasks are lost, or sent again if
    /// retries are on; a replacement is launched if respawn is on. `retired` says it left
    /// gracefully after draining (recycling), which does not count against the restart limit.
    pub(crate) fn worker_exited(
        self: &Arc<Self>,
        worker: usize,
        generation: u64,
        exit: Exit,
        cause: Option<String>,
        retired: bool,
    ) {
        let (lost, retry, restart) = {
            let mut inner = self.lock();
            if inner.state.generation(worker) != generation {
                return;
            }
            // Killed on purpose: that is why its link broke, whatever the link said.
            let cause = inner.workers[worker]
                .kill_cause
                .take()
                .or_else(|| cause.clone());
            let ids = inner.state.handle_exit(worker);
            inner.workers[worker].exit = Some(exit);
            inner.workers[worker].killer = None;
            inner.workers[worker].link_fd = None;
            let running = inner.state.phase() == Phase::Running;
            let mut lost = Vec::new();
            let mut retry = Vec::new();
            for id in ids {
                let Some(p) = inner.pending.remove(&id) else {
                    continue;
                };
                if running && p.attempts.load(Ordering::Relaxed) <= self.settings.retries {
                    retry.push((id, p));
                } else {
                    lost.push(p.done);
                }
            }
            inner.retrying += retry.len();
            let account = &mut inner.workers[worker].account;
            account.lost(lost.len(), &self.instruments[worker]);
            account.incarnation_ended();
            let how = if retired {
                Departure::Retired
            } else {
                Departure::Died
            };
            let restart = inner.state.decide_restart(worker, self.runtime.now(), how);
            (
                lost.into_iter()
                    .map(|d| (d, cause.clone()))
                    .collect::<Vec<_>>(),
                retry,
                restart,
            )
        };
        if !lost.is_empty() || !retry.is_empty() || !exit.success() {
            tracing::warn!(
                pool = %self.settings.name,
                worker,
                %exit,
                lost = lost.len(),
                retried = retry.len(),
                "looppool worker ended"
            );
        }
        for (done, cause) in lost {
            let _ = done.send(Err(TaskError::Lost {
                worker,
                exit,
                cause,
            }));
        }
        if !retry.is_empty() {
            let shared = self.clone();
            self.runtime.spawn(Box::pin(async move {
                for (id, p) in retry {
                    // At-least-once: the task may have run partly on the dead worker. It keeps
                    // its id, which goes on tagging its outputs.
                    if let Err((_, p)) = shared.place(Route::Any, Some(id), p, true).await {
                        let _ = p.done.send(Err(TaskError::Lost {
                            worker,
                            exit,
                            cause: Some("no worker could take its retry".into()),
                        }));
                    }
                    shared.lock().retrying -= 1;
                    shared.exited.notify(usize::MAX);
                }
            }));
        }
        match restart {
            Restart::After(delay) => respawn::schedule(self.clone(), worker, delay),
            Restart::GiveUp { failures, retry_at } => {
                respawn::given_up(self, worker, failures, retry_at)
            }
            Restart::Never => {}
        }
        self.wake_all();
    }
}
