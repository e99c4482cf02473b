//! The state every part of a running pool shares: the sans-IO state under one lock, the task
//! handles waiting for an end, and the events that wake writers, submitters and `stop`.
//!
//! Lock discipline: the lock is never held across an await, and nothing that can take the lock
//! again (dropping a [`Delivery`], which acknowledges it) happens while it is held. Events are
//! notified after the state change they announce, and waiters take their listener before they
//! look at the state under the lock, so no wake-up is lost. One system call is made under it: a
//! submitter's non-blocking send of a small task to a quiet worker (see `write_now`).

use super::ending::EndSender;
use super::handle::Delivery;
use super::incarnation::Respawner;
use super::outputs::OutputSender;
use super::stats::{Account, Instruments};
use crate::error::{Exit, RawTaskError, TaskError};
use crate::launch::Killer;
use crate::runtime::Runtime;
use crate::state::{IdMap, PoolState, Refusal, Route, Routing, TaskId};
use event_listener::Event;
use futures_channel::oneshot;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// An encoded task, shared by the state (which keeps it for retries) and the writer without
/// copying.
pub(crate) type Payload = Arc<[u8]>;

/// A task handle's sending side.
pub(crate) struct Pending<O> {
    /// Its end, and how many times it was sent, shared with its handle.
    pub(crate) done: EndSender,
    /// Where its outputs go.
    pub(crate) replies: Replies<O>,
    /// When it was submitted, for its latency.
    pub(crate) since: Instant,
    /// Its deadline after submission, if it has one.
    pub(crate) timeout: Option<Duration>,
}

/// Where a task's outputs go.
pub(crate) enum Replies<O> {
    /// To the pool's output stream.
    Outputs,
    /// A request-reply call: the first to the call (`None` once sent); later ones are
    /// acknowledged and discarded.
    First(Option<oneshot::Sender<Delivery<O>>>),
    /// A streamed call: every one to its stream. Deliveries left in a dropped stream acknowledge
    /// themselves as they are dropped.
    Stream(futures_channel::mpsc::UnboundedSender<Delivery<O>>),
}

/// What the state said comes next for a dead worker number; its supervisor carries it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Launch a replacement after this wait.
    Launch(Duration),
    /// Given up: ask the state again at this time.
    Retry(Instant),
}

/// What the driver holds for one worker number under the lock: its current process and link,
/// and what it knows of it. Its share of the pool's bookkeeping is in the state.
#[derive(Default)]
pub(crate) struct WorkerEntry {
    /// Kills the current incarnation; `None` once it exited.
    pub(crate) killer: Option<Killer>,
    /// A replacement being launched (before its handshake), to kill if the pool stops.
    pub(crate) launching: Option<Killer>,
    /// How its last incarnation ended.
    pub(crate) exit: Option<Exit>,
    /// Why its last incarnation ended, when it was not an orderly exit.
    pub(crate) cause: Option<String>,
    pub(crate) pid: Option<u32>,
    /// Why the parent killed it, for the tasks it loses.
    pub(crate) kill_cause: Option<String>,
    /// The parent's end of its live link, as a descriptor, for forked replacements to close.
    pub(crate) link_fd: Option<std::os::fd::RawFd>,
    /// A handle of its own on the same socket, which submitters write small tasks to (see
    /// `write_now`): owned here, so its descriptor cannot be closed or reused under them,
    /// whatever becomes of the link's tasks. Set with the incarnation and dropped with its
    /// link (forked replacements close it too).
    pub(crate) sender: Option<std::os::unix::net::UnixStream>,
    /// Bytes of frames a submitter began writing to the live link and the socket did not take:
    /// its writer sends them before anything else (see `write_now`). Emptied with a new link.
    pub(crate) carry: Vec<u8>,
    /// What its supervisor is to do next, as the state decided.
    pub(crate) next: Option<Next>,
    /// What the parent knows about it, for statistics.
    pub(crate) account: Account,
}

/// What the driver holds for one worker number outside the lock: its wake-ups and metrics.
pub(crate) struct Lane {
    /// Room for a task was made, or the worker exited or came back, or the pool began stopping.
    pub(crate) room: Event,
    /// Something is waiting to be written to its link.
    pub(crate) writer: Event,
    /// Its writer has nothing in hand and waits, or is about to wait, on `writer`. Raised under
    /// the lock when a look at the state found nothing to write, lowered under the lock when a
    /// look found something, and by a wake-up. A wake-up while it is lowered is not needed (the
    /// writer looks again after every write) and skips the event's lock; a submitter that sees
    /// it raised under the lock may write to the link itself (see `write_now`). It starts
    /// raised: before an incarnation's writer first looks, it has nothing in hand either.
    pub(crate) writer_may_wait: AtomicBool,
    /// The state decided what its supervisor does next.
    pub(crate) supervisor: Event,
    /// When a frame last arrived, in microseconds since the pool's base instant.
    last_seen: AtomicU64,
    pub(crate) instruments: Instruments,
}

pub(crate) struct Inner<O> {
    pub(crate) state: PoolState<Payload>,
    pub(crate) pending: IdMap<Pending<O>>,
    /// One entry per worker number.
    pub(crate) workers: Vec<WorkerEntry>,
}

impl<O> Inner<O> {
    pub(crate) fn new(state: PoolState<Payload>, workers: Vec<WorkerEntry>) -> Self {
        Self {
            state,
            pending: IdMap::default(),
            workers,
        }
    }
}

/// Settings the running pool consults.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) max_frame: usize,
    pub(crate) stop_timeout: Duration,
    /// Whether the monitor measures workers' memory (the state holds the limit).
    pub(crate) watch_memory: bool,
    /// Whether the monitor measures workers' silence for the stall limit (the state holds it).
    pub(crate) watch_stalls: bool,
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
    /// One lane per worker number.
    pub(crate) lanes: Vec<Lane>,
    /// A worker exited, or a replacement settled.
    pub(crate) exited: Event,
    /// Room was made in some worker: untargeted submissions under least-loaded routing wait
    /// for any worker, not one.
    pub(crate) room_any: Event,
    /// The state's next deadline may have moved: the pool's clock looks again.
    pub(crate) clock: Event,
    pub(crate) outputs: OutputSender<O>,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) settings: Settings,
    pub(crate) respawner: Option<Respawner>,
    pub(crate) base: Instant,
}

impl<O> Shared<O> {
    pub(crate) fn new(
        inner: Inner<O>,
        runtime: Arc<dyn Runtime>,
        settings: Settings,
        respawner: Option<Respawner>,
    ) -> Self {
        let n = inner.state.size();
        let outputs = OutputSender::new();
        let base = runtime.now();
        super::stats::describe();
        let lanes = (0..n)
            .map(|w| Lane {
                room: Event::new(),
                writer: Event::new(),
                writer_may_wait: AtomicBool::new(true),
                supervisor: Event::new(),
                last_seen: AtomicU64::new(0),
                instruments: Instruments::new(&settings.name, w),
            })
            .collect();
        Self {
            inner: Mutex::new(inner),
            lanes,
            exited: Event::new(),
            room_any: Event::new(),
            clock: Event::new(),
            outputs,
            runtime,
            settings,
            respawner,
            base,
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
    ///
    /// Called after the state change it announces, with the lock released.
    pub(crate) fn wake_writer(&self, worker: usize) {
        let lane = &self.lanes[worker];
        if lane.writer_may_wait.swap(false, Ordering::SeqCst) {
            lane.writer.notify(usize::MAX);
        }
    }

    /// Wakes everything that waits on the pool's phase: submitters, writers and supervisors of
    /// every worker, and `stop`.
    pub(crate) fn wake_all(&self) {
        for lane in &self.lanes {
            lane.room.notify(usize::MAX);
            lane.writer.notify(usize::MAX);
            lane.supervisor.notify(usize::MAX);
        }
        self.exited.notify(usize::MAX);
        self.room_any.notify(usize::MAX);
        self.clock.notify(usize::MAX);
    }

    /// Records that a frame from `worker` arrived now.
    pub(crate) fn seen(&self, worker: usize) {
        self.seen_at(worker, self.runtime.now());
    }

    /// A frame from `worker` arrived at `now`.
    pub(crate) fn seen_at(&self, worker: usize, now: std::time::Instant) {
        let micros = now.saturating_duration_since(self.base).as_micros() as u64;
        self.lanes[worker]
            .last_seen
            .store(micros, Ordering::Relaxed);
    }

    /// Wakes whoever waits for room at `worker`, or at any worker.
    pub(crate) fn room_freed(&self, worker: usize) {
        self.lanes[worker].room.notify(usize::MAX);
        self.room_any.notify(usize::MAX);
    }

    /// How long ago a frame from `worker` arrived.
    pub(crate) fn silent_for(&self, worker: usize) -> Duration {
        let now = self.runtime.now().saturating_duration_since(self.base);
        now.saturating_sub(Duration::from_micros(
            self.lanes[worker].last_seen.load(Ordering::Relaxed),
        ))
    }

    /// Places a new task for `route`, waiting while the chosen worker is full or being replaced
    /// if `wait`. On refusal the pending entry is handed back. A small task for a quiet worker
    /// is written to its link here (see `write_now`); any other is left to the link's writer.
    pub(crate) async fn place(
        &self,
        route: Route,
        payload: &Payload,
        pending: Pending<O>,
        wait: bool,
        timeout: Option<Duration>,
    ) -> Result<(usize, TaskId), (Refusal, Pending<O>)> {
        loop {
            let listener = {
                let mut inner = self.lock();
                let deadline = timeout.and_then(|t| self.runtime.now().checked_add(t));
                match inner.state.submit_until(route, payload.clone(), deadline) {
                    Ok((worker, id)) => {
                        pending.done.sent_again();
                        inner.pending.insert(id, pending);
                        let written = payload.len() <= super::write_now::WRITE_NOW_LIMIT
                            && self.write_now(&mut inner, worker);
                        drop(inner);
                        if !written {
                            self.wake_writer(worker);
                        }
                        if deadline.is_some() {
                            // A new deadline for the pool's clock.
                            self.clock.notify(usize::MAX);
                        }
                        return Ok((worker, id));
                    }
                    Err(Refusal::Full { .. }) if wait && waits_for_any(route, &inner.state) => {
                        self.room_any.listen()
                    }
                    Err(Refusal::Full { worker } | Refusal::Replacing { worker }) if wait => {
                        self.lanes[worker].room.listen()
                    }
                    Err(refusal) => return Err((refusal, pending)),
                }
            };
            listener.await;
        }
    }
}

/// Whether a full refusal of `route` means every live worker is full, so that room in any of
/// them will do.
fn waits_for_any(route: Route, state: &PoolState<Payload>) -> bool {
    route == Route::Any && state.routing() == Routing::LeastLoaded
}

impl<O> Shared<O> {
    /// Cancels task `id`: if it has not ended, it ends now with `why` and its worker is told to
    /// drop it (and killed if it does not within the cancel grace). Returns whether it had not
    /// ended.
    pub(crate) fn cancel(&self, id: TaskId, why: RawTaskError) -> bool {
        let now = self.runtime.now();
        let (done, worker, actions) = {
            let mut inner = self.lock();
            let Some(worker) = inner.state.handle_cancel(id, now) else {
                return false;
            };
            let done = inner.pending.remove(&id).map(|p| p.done);
            (done, worker, self.decisions(&mut inner))
        };
        if let Some(done) = done {
            done.send(Err(why));
        }
        actions.run(self);
        self.wake_writer(worker);
        self.room_freed(worker);
        self.clock.notify(usize::MAX);
        true
    }
}

impl<O: Send> super::handle::CancelSink for Shared<O> {
    fn cancel(&self, id: TaskId) -> bool {
        Shared::cancel(self, id, TaskError::Cancelled)
    }
}
