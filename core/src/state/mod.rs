//! The pool's bookkeeping, without I/O, clocks or a runtime.
//!
//! [`PoolState`] is what the async driver consults under its lock: which worker a task goes
//! to, whether that worker has room, which tasks each worker holds, how many outputs each worker
//! has outstanding, what must be written to each link next, and how far a stop has come. Inputs
//! are `handle_*` methods (and [`submit`](PoolState::submit) / [`broadcast`](PoolState::broadcast)),
//! outputs are [`poll_event`](PoolState::poll_event) (the decisions the driver carries out:
//! kills, relaunches, give-ups, lost and retried tasks, retirements),
//! [`poll_transmit`](PoolState::poll_transmit) (what to write to each link) and
//! [`poll_timeout`](PoolState::poll_timeout). Time is passed in.
//! Because nothing here waits or performs I/O, every invariant of the pool can be checked by
//! driving this type with random inputs (see the `looppool-testkit` crate).
//!
//! The payload type `P` is opaque: the driver uses shared encoded bytes, the model checks use
//! small markers.
//!
//! [`members::Members`] is the same kind of state for a pool whose members come and go (the
//! NATS transport's parent): routing, backlogs and the task table over keyed members.

mod cancel;
mod lifecycle;
pub mod members;
mod restart;
mod slot;
mod types;

use restart::History;
pub use restart::{Departure, Restart, RestartPolicy};
pub use slot::WorkerStatus;
use slot::{Held, Slot};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
pub(crate) use types::IdMap;
pub use types::{
    Event, KillCause, Loss, Phase, Refusal, Retirement, Route, Routing, TaskId, Transmit, Violation,
};

/// A task whose worker died holding it, waiting for a worker to retry it on.
#[derive(Debug)]
struct Deferred<P> {
    id: TaskId,
    /// The worker that died holding it.
    from: usize,
    held: Held<P>,
}

/// The sans-IO state of one pool. See the [module docs](self).
#[derive(Debug)]
pub struct PoolState<P> {
    slots: Vec<Slot<P>>,
    capacity: usize,
    result_credit: usize,
    cursor: usize,
    next_id: TaskId,
    phase: Phase,
    /// Sticky broadcasts by key, in the order they were last set: replayed to replacements.
    sticky: Vec<(String, P)>,
    /// How dead workers are relaunched; `None`: they are not.
    restart: Option<RestartPolicy>,
    /// Outputs per worker granted past the consumer once a stop begins.
    stop_backlog: usize,
    /// Retire a worker once its incarnation ended this many tasks.
    recycle_after: Option<u64>,
    /// Replacements decided and not yet registered or abandoned: a stop waits for them.
    launches: usize,
    /// Per worker number, across its incarnations.
    histories: Vec<History>,
    /// Times a task lost with its worker is sent again (while the pool runs).
    retries: u32,
    /// Lost tasks waiting for a worker with room, oldest first.
    deferred: VecDeque<Deferred<P>>,
    /// Kill a worker whose loop has not turned for this long while it holds tasks.
    stall_limit: Option<Duration>,
    /// Retire a worker whose resident memory passes this many bytes.
    memory_limit: Option<u64>,
    /// Decisions for the driver, oldest first.
    events: VecDeque<Event>,
    /// How untargeted submissions pick their worker.
    routing: Routing,
    /// How long a worker has to drop a cancelled task before it is killed; `None`: never.
    cancel_grace: Option<Duration>,
    /// Workers killed at the stop deadline or by [`kill_all`](Self::kill_all), in order.
    killed: Vec<usize>,
}

impl<P: Clone> PoolState<P> {
    /// A pool of `workers` workers, each holding at most `capacity` unfinished tasks and at most
    /// `result_credit` unacknowledged outputs. Every worker starts in [`WorkerStatus::Starting`].
    ///
    /// # Panics
    /// If any argument is zero.
    pub fn new(workers: usize, capacity: usize, result_credit: usize) -> Self {
        assert!(workers > 0, "a pool needs at least one worker");
        assert!(capacity > 0, "a worker's task capacity must be at least 1");
        assert!(
            result_credit > 0,
            "a worker's result credit must be at least 1"
        );
        Self {
            slots: (0..workers).map(|_| Slot::new()).collect(),
            capacity,
            result_credit,
            cursor: 0,
            next_id: 1,
            phase: Phase::Running,
            sticky: Vec::new(),
            restart: None,
            stop_backlog: 0,
            recycle_after: None,
            launches: 0,
            histories: vec![History::default(); workers],
            retries: 0,
            deferred: VecDeque::new(),
            stall_limit: None,
            memory_limit: None,
            events: VecDeque::new(),
            killed: Vec::new(),
            routing: Routing::default(),
            cancel_grace: None,
        }
    }

    /// Sets how untargeted submissions pick their worker (default
    /// [`Routing::LeastLoaded`]).
    pub fn set_routing(&mut self, routing: Routing) {
        self.routing = routing;
    }

    /// How untargeted submissions pick their worker.
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// Sends a task whose worker died holding it to another worker (or to its own number's
    /// replacement, if it was targeted) up to `retries` more times while the pool runs
    /// (default 0): at least once, since it may have run partly. It keeps its id.
    pub fn set_retries(&mut self, retries: u32) {
        self.retries = retries;
    }

    /// Kills a worker whose event loop has not turned for longer than `limit` while it holds
    /// tasks (see [`handle_silence`](Self::handle_silence)); `None`, the default, never.
    pub fn set_stall_limit(&mut self, limit: Option<Duration>) {
        self.stall_limit = limit;
    }

    /// Retires a worker whose resident memory passes `bytes` (see
    /// [`handle_memory`](Self::handle_memory)); `None`, the default, never.
    pub fn set_memory_limit(&mut self, bytes: Option<u64>) {
        self.memory_limit = bytes;
    }

    /// Sets how many outputs each worker may emit past its result credit once a stop begins
    /// (default 0): the stop grants them at once, so that workers finish their tasks whether
    /// or not the consumer reads, with at most `result_credit + backlog` unacknowledged outputs
    /// per worker.
    pub fn set_stop_backlog(&mut self, backlog: usize) {
        self.stop_backlog = backlog;
    }

    /// Retires each worker (see [`handle_retire`](Self::handle_retire)) once its incarnation
    /// ended `tasks` tasks; `None`, the default, never.
    pub fn set_recycle_after(&mut self, tasks: Option<u64>) {
        self.recycle_after = tasks;
    }

    /// Sets how dead workers are relaunched ([`handle_exit`](Self::handle_exit)); `None`,
    /// the default, relaunches none.
    pub fn set_restart_policy(&mut self, policy: Option<RestartPolicy>) {
        self.restart = policy;
    }

    /// Accepts a task for the worker `route` picks and queues it for that worker's link.
    /// Returns the worker number and the task's new id.
    pub fn submit(&mut self, route: Route, payload: P) -> Result<(usize, TaskId), Refusal> {
        self.submit_until(route, payload, None)
    }

    /// Like [`submit`](Self::submit), and the task is cancelled at `deadline` if it has not
    /// ended by then ([`Event::Expired`], from [`handle_timeout`](Self::handle_timeout)); the
    /// deadline holds through retries.
    pub fn submit_until(
        &mut self,
        route: Route,
        payload: P,
        deadline: Option<Instant>,
    ) -> Result<(usize, TaskId), Refusal> {
        let worker = self.choose(route)?;
        let id = self.take_id();
        self.slots[worker].accept(id, payload, route, 1, deadline);
        if route == Route::Any {
            self.cursor = (worker + 1) % self.slots.len();
        }
        Ok((worker, id))
    }

    /// Accepts one copy of a task for every live worker, all or nothing: if any live worker is
    /// full, nothing is queued. Each copy is queued behind everything already queued for its
    /// worker. Returns `(worker, id)` for each copy, in worker order.
    pub fn broadcast(&mut self, payload: P) -> Result<Vec<(usize, TaskId)>, Refusal> {
        self.check_open()?;
        // A replacement still replaying must get every broadcast after its replays.
        if let Some(worker) = (0..self.slots.len()).find(|&k| self.slots[k].replaying()) {
            return Err(Refusal::Replacing { worker });
        }
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|&k| self.slots[k].accepts())
            .collect();
        if live.is_empty() {
            return Err(self.none_accepting());
        }
        if let Some(&worker) = live
            .iter()
            .find(|&&k| self.slots[k].held() >= self.capacity)
        {
            return Err(Refusal::Full { worker });
        }
        Ok(live
            .into_iter()
            .map(|k| {
                let id = self.take_id();
                self.slots[k].accept(id, payload.clone(), Route::Worker(k), 1, None);
                (k, id)
            })
            .collect())
    }

    /// Like [`broadcast`](Self::broadcast), and also remembered under `key` (replacing what was
    /// remembered under it) so that every replacement worker receives it before anything else.
    pub fn broadcast_sticky(
        &mut self,
        key: &str,
        payload: P,
    ) -> Result<Vec<(usize, TaskId)>, Refusal> {
        let copies = self.broadcast(payload.clone())?;
        self.sticky.retain(|(k, _)| k != key);
        self.sticky.push((key.to_string(), payload));
        Ok(copies)
    }

    /// The refusal when no worker accepts tasks: wait for one being replaced, if any.
    fn none_accepting(&self) -> Refusal {
        (0..self.slots.len())
            .find(|&k| self.slots[k].status() == WorkerStatus::Replacing || self.slots[k].is_live())
            .map_or(Refusal::NoLiveWorkers, |worker| Refusal::Replacing {
                worker,
            })
    }

    /// Which worker `route` would pick now, or why the submission would be refused.
    pub fn choose(&self, route: Route) -> Result<usize, Refusal> {
        self.check_open()?;
        let worker = match route {
            Route::Worker(worker) => self.targeted(worker)?,
            Route::Key(key) => self.targeted((key % self.slots.len() as u64) as usize)?,
            Route::Any => {
                let n = self.slots.len();
                let mut accepting = (0..n)
                    .map(|i| (self.cursor + i) % n)
                    .filter(|&k| self.slots[k].accepts());
                let first = accepting.next().ok_or_else(|| self.none_accepting())?;
                match self.routing {
                    Routing::RoundRobin => first,
                    // The first in rotation among the least loaded; if all are full, the first
                    // is the one reported full.
                    _ => std::iter::once(first)
                        .chain(accepting)
                        .min_by_key(|&k| self.slots[k].held())
                        .unwrap_or(first),
                }
            }
        };
        if self.slots[worker].held() >= self.capacity {
            return Err(Refusal::Full { worker });
        }
        Ok(worker)
    }

    fn targeted(&self, worker: usize) -> Result<usize, Refusal> {
        let slot = self.slots.get(worker).ok_or(Refusal::NoSuchWorker {
            worker,
            size: self.slots.len(),
        })?;
        if !slot.accepts() {
            return Err(match slot.status() {
                WorkerStatus::Exited => Refusal::WorkerExited { worker },
                _ => Refusal::Replacing { worker },
            });
        }
        Ok(worker)
    }

    fn check_open(&self) -> Result<(), Refusal> {
        match self.phase {
            Phase::Running => Ok(()),
            _ => Err(Refusal::Closed),
        }
    }

    fn take_id(&mut self) -> TaskId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The worker finished its handshake at `now`.
    pub fn handle_ready(&mut self, worker: usize, now: Instant) -> Result<(), Violation> {
        self.slots[worker].ready(worker)?;
        self.histories[worker].ready(now);
        Ok(())
    }

    /// The worker emitted an output, tagged with `task` (one it holds) or with none (an
    /// unsolicited output). It now counts against the worker number's result credit until
    /// [`handle_ack`](Self::handle_ack).
    pub fn handle_output(&mut self, worker: usize, task: Option<TaskId>) -> Result<(), Violation> {
        let credit = match self.phase {
            Phase::Running => self.result_credit,
            _ => self.result_credit + self.stop_backlog,
        };
        self.slots[worker].output(worker, task, credit)
    }

    /// The consumer acknowledged one output of worker number `worker`, whichever incarnation
    /// emitted it: the credit belongs to the number. The current incarnation gets it back (an
    /// [`Ack`](Transmit::Ack)) if it is alive and not leaving; otherwise its replacement starts
    /// with it (see [`replacement_credit`](Self::replacement_credit)).
    pub fn handle_ack(&mut self, worker: usize) {
        self.slots[worker].ack();
    }

    /// The result credit a replacement of `worker` launched now starts with: the credit less
    /// the outputs of earlier incarnations still unacknowledged, so that a number never has more
    /// than its credit outstanding however often it is replaced.
    pub fn replacement_credit(&self, worker: usize) -> usize {
        self.result_credit
            .saturating_sub(self.slots[worker].unacked())
    }

    /// The worker reported the end of task `id`.
    /// Ending a task may release a sticky replay to a replacement, retires a worker that
    /// reached its recycling limit (see [`has_transmit`](Self::has_transmit)), and makes room
    /// for a retry waiting for one.
    pub fn handle_done(&mut self, worker: usize, id: TaskId) -> Result<(), Violation> {
        let ended = self.slots[worker].done(worker, id)?;
        self.release_replay(worker);
        // Sticky replays are neither service (for the restart policy) nor work (for recycling).
        if let Some(ended) = ended {
            self.histories[worker].ended_task();
            if self.recycle_after.is_some_and(|limit| ended >= limit) {
                self.retire(worker, Retirement::Tasks(ended));
            }
        }
        self.place_deferred();
        Ok(())
    }

    fn release_replay(&mut self, worker: usize) -> Vec<TaskId> {
        let (capacity, next_id) = (self.capacity, &mut self.next_id);
        self.slots[worker].release_replay(capacity, || {
            let id = *next_id;
            *next_id += 1;
            id
        })
    }

    /// The worker said it drained everything after the poison pill.
    pub fn handle_bye(&mut self, worker: usize) -> Result<(), Violation> {
        self.slots[worker].bye(worker)
    }

    /// The next thing to write to worker `worker`'s link, in order.
    ///
    /// Credits the consumer gave back go with a frame written to the worker anyway, or on their
    /// own once they make half its result credit or the worker has less than half of it left:
    /// one acknowledgement per output would cost the worker a wake-up per output, and a worker
    /// that used up its credit gets back whatever the consumer read at once, however many
    /// deliveries the consumer holds. A stop's backlog and a replacement's due credit go at once.
    #[must_use]
    pub fn poll_transmit(&mut self, worker: usize) -> Option<Transmit<P>> {
        self.slots[worker].poll_transmit(self.result_credit)
    }

    /// Whether anything is waiting to be written to `worker`'s link.
    pub fn has_transmit(&self, worker: usize) -> bool {
        self.slots[worker].has_transmit(self.result_credit)
    }

    /// Where the pool is in its life.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether a stop has begun, every worker has exited and no replacement is under way.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped && self.launches == 0 && self.deferred.is_empty()
    }

    /// The workers killed at the stop deadline or by [`kill_all`](Self::kill_all), in order.
    pub fn killed(&self) -> &[usize] {
        &self.killed
    }

    /// Lost tasks waiting for a worker with room to be retried on.
    pub fn retries_waiting(&self) -> usize {
        self.deferred.len()
    }

    /// The number of workers (live or not).
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// Each worker's task capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Each worker's result credit.
    pub fn result_credit(&self) -> usize {
        self.result_credit
    }

    /// The state of worker `worker`.
    pub fn status(&self, worker: usize) -> WorkerStatus {
        self.slots[worker].status()
    }

    /// The incarnation of worker `worker` (0 for the first, +1 per replacement).
    pub fn generation(&self, worker: usize) -> u64 {
        self.slots[worker].generation()
    }

    /// Whether `worker` said goodbye after draining (it is exiting by itself).
    pub fn said_goodbye(&self, worker: usize) -> bool {
        self.slots[worker].said_bye()
    }

    /// Tasks accepted for `worker` that have not ended.
    pub fn held(&self, worker: usize) -> usize {
        self.slots[worker].held()
    }

    /// The tasks `worker` holds, oldest first.
    pub fn held_ids(&self, worker: usize) -> Vec<TaskId> {
        self.slots[worker].held_ids()
    }

    /// Whether `worker` holds task `id`.
    pub fn holds(&self, worker: usize, id: TaskId) -> bool {
        self.slots[worker].holds(id)
    }

    /// Outputs `worker` emitted that the consumer has not acknowledged.
    pub fn unacked(&self, worker: usize) -> usize {
        self.slots[worker].unacked()
    }

    /// Whether nothing streams to or from `worker` but the one task it was just given: it
    /// holds no other task, and the consumer acknowledged every output it emitted. A driver
    /// sends such a worker's task at once, on its own; a worker that is busy, or whose outputs
    /// are still being read, is in the middle of a stream, and its tasks can wait a moment to
    /// share one write.
    pub fn quiet(&self, worker: usize) -> bool {
        let slot = &self.slots[worker];
        slot.held() <= 1 && slot.unacked() == 0
    }
}

#[cfg(test)]
mod tests;
