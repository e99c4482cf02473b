//! The pool's bookkeeping, without I/O, clocks or a runtime.
//!
//! [`PoolState`] is what the async driver consults under its lock: which worker a task goes
//! to, whether that worker has room, which tasks each worker holds, how many outputs each worker
//! has outstanding, what must be written to each link next, and how far a stop has come. Inputs
//! are `handle_*` methods (and [`submit`](PoolState::submit) / [`broadcast`](PoolState::broadcast)),
//! outputs are return values and [`poll_transmit`](PoolState::poll_transmit). Time is passed in.
//! Because nothing here waits or performs I/O, every invariant of the pool can be checked by
//! driving this type with random inputs (see the `looppool-testkit` crate).
//!
//! The payload type `P` is opaque: the driver uses shared encoded bytes, the model checks use
//! small markers.

mod restart;
mod slot;
mod types;

use restart::History;
pub use restart::{Departure, Restart, RestartPolicy};
use slot::Slot;
pub use slot::WorkerStatus;
use std::time::{Duration, Instant};
pub(crate) use types::IdMap;
pub use types::{Phase, Refusal, Route, TaskId, Transmit, Violation};

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
        }
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

    /// Sets how dead workers are relaunched ([`decide_restart`](Self::decide_restart)); `None`,
    /// the default, relaunches none.
    pub fn set_restart_policy(&mut self, policy: Option<RestartPolicy>) {
        self.restart = policy;
    }

    /// Accepts a task for the worker `route` picks and queues it for that worker's link.
    /// Returns the worker number and the task's new id.
    pub fn submit(&mut self, route: Route, payload: P) -> Result<(usize, TaskId), Refusal> {
        let worker = self.choose(route)?;
        let id = self.take_id();
        self.slots[worker].accept(id, payload);
        if route == Route::Any {
            self.cursor = (worker + 1) % self.slots.len();
        }
        Ok((worker, id))
    }

    /// Accepts again, under its own id, a task whose worker died holding it (a retry): the
    /// id keeps tagging its outputs. Routed like [`submit`](Self::submit).
    pub fn resubmit(&mut self, route: Route, id: TaskId, payload: P) -> Result<usize, Refusal> {
        debug_assert!(
            id < self.next_id,
            "only an id this pool gave out can be resubmitted"
        );
        debug_assert!(
            (0..self.slots.len()).all(|k| !self.slots[k].holds(id)),
            "task {id} is still held"
        );
        let worker = self.choose(route)?;
        self.slots[worker].accept(id, payload);
        if route == Route::Any {
            self.cursor = (worker + 1) % self.slots.len();
        }
        Ok(worker)
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
                self.slots[k].accept(id, payload.clone());
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
            Route::Worker(worker) => {
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
                worker
            }
            Route::Any => {
                let n = self.slots.len();
                (0..n)
                    .map(|i| (self.cursor + i) % n)
                    .find(|&k| self.slots[k].accepts())
                    .ok_or_else(|| self.none_accepting())?
            }
        };
        if self.slots[worker].held() >= self.capacity {
            return Err(Refusal::Full { worker });
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
    /// Ending a task may release a sticky replay to a replacement, and retires a worker that
    /// reached its recycling limit: see [`has_transmit`](Self::has_transmit).
    pub fn handle_done(&mut self, worker: usize, id: TaskId) -> Result<(), Violation> {
        let ended = self.slots[worker].done(worker, id)?;
        self.release_replay(worker);
        // Sticky replays are neither service (for the restart policy) nor work (for recycling).
        if let Some(ended) = ended {
            self.histories[worker].ended_task();
            if self.recycle_after.is_some_and(|limit| ended >= limit) {
                self.handle_retire(worker);
            }
        }
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

    /// The worker's process (or thread) is gone. Returns the tasks it held, which are lost, in
    /// the order they were accepted. Calling it again for the same incarnation returns nothing.
    pub fn handle_exit(&mut self, worker: usize) -> Vec<TaskId> {
        let lost = self.slots[worker].exit();
        if let Phase::Stopping { .. } = self.phase {
            if self.slots.iter().all(|s| !s.is_live()) {
                self.phase = Phase::Stopped;
            }
        }
        lost
    }

    /// Decides whether and when the exited `worker` (whose incarnation ended `how` at `now`,
    /// or whose replacement failed to launch) is relaunched, by the [`RestartPolicy`]. While a
    /// replacement is due, targeted submissions wait for it; a given-up number refuses them.
    ///
    /// A replacement decided here is *under way* (and a stop waits for it) until it is
    /// registered ([`handle_replaced`](Self::handle_replaced)) or abandoned
    /// ([`handle_launch_abandoned`](Self::handle_launch_abandoned)); a failed launch
    /// (`Departure::LaunchFailed`) that is not tried again ends it too.
    pub fn decide_restart(&mut self, worker: usize, now: Instant, how: Departure) -> Restart {
        let decision = self.restart_decision(worker, now, how);
        match (how, decision) {
            (Departure::LaunchFailed, Restart::After(_)) => {}
            (Departure::LaunchFailed, _) => self.launches = self.launches.saturating_sub(1),
            (_, Restart::After(_)) => self.launches += 1,
            _ => {}
        }
        decision
    }

    fn restart_decision(&mut self, worker: usize, now: Instant, how: Departure) -> Restart {
        let Some(policy) = self.restart.filter(|_| self.phase == Phase::Running) else {
            return Restart::Never;
        };
        if self.slots[worker].is_live() {
            return Restart::Never;
        }
        let decision = self.histories[worker].decide(&policy, now, how);
        self.slots[worker].set_replacing(matches!(decision, Restart::After(_)));
        decision
    }

    /// A replacement under way was given up by the driver (a stop began before or while it
    /// launched; it was killed).
    pub fn handle_launch_abandoned(&mut self) {
        self.launches = self.launches.saturating_sub(1);
    }

    /// Replacements decided and not yet registered or abandoned.
    pub fn launches_under_way(&self) -> usize {
        self.launches
    }

    /// Takes the given-up `worker` back: a replacement is due now (returns `true`) if its
    /// retry time has come by `now`, or at once when `now` is `None` (a revival on request).
    /// Nothing happens while the pool is stopping or the number is not given up.
    pub fn revive(&mut self, worker: usize, now: Option<Instant>) -> bool {
        let Some(policy) = self.restart.filter(|_| self.phase == Phase::Running) else {
            return false;
        };
        if self.slots[worker].is_live() || !self.histories[worker].revive(&policy, now) {
            return false;
        }
        self.slots[worker].set_replacing(true);
        self.launches += 1;
        true
    }

    /// When the given-up `worker` is tried again, if it is given up.
    pub fn given_up_until(&self, worker: usize) -> Option<Instant> {
        let policy = self.restart?;
        if self.slots[worker].status() != WorkerStatus::Exited {
            return None;
        }
        Some(self.histories[worker].given_up_at()? + policy.retry_after)
    }

    /// A replacement for the exited `worker` is being launched: targeted submissions wait for
    /// it rather than fail. Ignored once a stop has begun.
    pub fn handle_replacing(&mut self, worker: usize) {
        if self.phase == Phase::Running {
            self.slots[worker].set_replacing(true);
        }
    }

    /// The replacement of `worker` will not come (its restart limit is spent).
    pub fn handle_given_up(&mut self, worker: usize) {
        self.slots[worker].set_replacing(false);
    }

    /// Asks `worker` to retire: it takes no new tasks, receives the poison pill behind what it
    /// holds, and drains; its replacement then takes its number. Returns whether it began
    /// retiring now (not if it already was, or has exited, or the pool is stopping).
    pub fn handle_retire(&mut self, worker: usize) -> bool {
        let slot = &mut self.slots[worker];
        if self.phase != Phase::Running || !slot.accepts() {
            return false;
        }
        slot.queue_stop();
        true
    }

    /// A new incarnation of an exited worker takes its number; it was launched with
    /// `credit_given` result credit (its [`replacement_credit`](Self::replacement_credit) then).
    /// Outputs of earlier incarnations acknowledged since its launch are owed to it and go out
    /// as an [`Ack`](Transmit::Ack). Every sticky broadcast is replayed to it before anything
    /// else, as many at a time as its capacity allows; until the last is out it takes no other
    /// task and broadcasts wait. Returns its generation and the ids of the replays sent now
    /// (more follow as it ends tasks).
    ///
    /// # Panics
    /// If the worker has not exited.
    pub fn handle_replaced(&mut self, worker: usize, credit_given: usize) -> (u64, Vec<TaskId>) {
        self.launches = self.launches.saturating_sub(1);
        let owed = self.replacement_credit(worker).saturating_sub(credit_given);
        let generation = self.slots[worker].replace(owed);
        let payloads: Vec<P> = self.sticky.iter().map(|(_, p)| p.clone()).collect();
        self.slots[worker].queue_replay(payloads);
        (generation, self.release_replay(worker))
    }

    /// Begins a graceful stop: new submissions are refused, every live worker is sent the poison
    /// pill behind what it already has and granted the stop backlog
    /// ([`set_stop_backlog`](Self::set_stop_backlog)), and workers still alive at `now + grace` are to be killed
    /// (see [`handle_timeout`](Self::handle_timeout)). Calling it again only brings the deadline
    /// forward (a kill after a graceful stop began).
    pub fn begin_stop(&mut self, now: Instant, grace: Duration) {
        match self.phase {
            Phase::Running => {}
            Phase::Stopping { deadline } => {
                self.phase = Phase::Stopping {
                    deadline: deadline.min(now + grace),
                };
                return;
            }
            Phase::Stopped => return,
        }
        self.phase = Phase::Stopping {
            deadline: now + grace,
        };
        for slot in &mut self.slots {
            slot.queue_stop();
            slot.grant(self.stop_backlog);
            // A stop cancels the replacements on their way.
            slot.set_replacing(false);
        }
        if self.slots.iter().all(|s| !s.is_live()) {
            self.phase = Phase::Stopped;
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Stopping { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// Time has reached `now`. Returns the workers the driver must kill now (each once).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<usize> {
        match self.phase {
            Phase::Stopping { deadline } if now >= deadline => (0..self.slots.len())
                .filter(|&k| self.slots[k].take_kill())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The next thing to write to worker `worker`'s link, in order.
    #[must_use]
    pub fn poll_transmit(&mut self, worker: usize) -> Option<Transmit<P>> {
        self.slots[worker].poll_transmit()
    }

    /// Whether anything is waiting to be written to `worker`'s link.
    pub fn has_transmit(&self, worker: usize) -> bool {
        self.slots[worker].has_transmit()
    }

    /// Where the pool is in its life.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether a stop has begun, every worker has exited and no replacement is under way.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped && self.launches == 0
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
}

#[cfg(test)]
mod tests;
