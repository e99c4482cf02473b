//! One worker's share of the pool state.

use super::IdMap;
use super::{Route, TaskId, Transmit, Violation};
use std::collections::VecDeque;
use std::time::Instant;

/// Where one worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerStatus {
    /// Launched; the handshake has not completed. Tasks may already be queued for it.
    Starting,
    /// Handshake done; processing tasks.
    Ready,
    /// Sent the poison pill (or said goodbye); finishing what it holds.
    Draining,
    /// Its process or thread is gone and a replacement is on its way: targeted submissions wait.
    Replacing,
    /// Its process or thread is gone for good (or until a replacement is launched).
    Exited,
}

/// A task a worker holds: what a retry needs.
#[derive(Debug)]
pub(super) struct Held<P> {
    /// The order it was accepted in, for reporting losses in order.
    seq: u64,
    pub(super) payload: P,
    pub(super) route: Route,
    /// How many times it was sent, this time included.
    pub(super) attempts: u32,
    /// A sticky replay: not work the worker served, and never retried.
    pub(super) replay: bool,
    /// When it is cancelled if it has not ended.
    pub(super) deadline: Option<Instant>,
}

#[derive(Debug)]
pub(super) struct Slot<P> {
    status: WorkerStatus,
    generation: u64,
    /// Unfinished tasks.
    tasks: IdMap<Held<P>>,
    seq: u64,
    /// Tasks this incarnation ended, sticky replays aside.
    ended: u64,
    unacked: usize,
    /// Credits the consumer gave back that the worker has not been sent.
    ack_due: u32,
    /// They go at once: a stop's backlog or a replacement's due credit, not the consumer's
    /// acknowledgements.
    ack_urgent: bool,
    /// A frame left the outbox since the last acknowledgement went: acknowledgements due ride
    /// along in the same write.
    frame_taken: bool,
    outbox: VecDeque<Transmit<P>>,
    stop_queued: bool,
    said_bye: bool,
    kill_taken: bool,
    /// Sticky broadcasts still to replay to this (replacement) worker, released as its
    /// capacity allows; it takes no other task until they are all out.
    replay: VecDeque<P>,
    /// Tasks cancelled after they were sent, with when the worker must have dropped them; they
    /// no longer count against its capacity.
    cancelling: Vec<(TaskId, Option<Instant>)>,
    /// It was killed for not dropping a cancelled task: its other tasks are not at fault.
    killed_for_cancel: bool,
}

/// Credits given back that make an acknowledgement worth a frame of its own, for a result credit
/// of `credit`: half of it, rounded up.
fn ack_batch(credit: usize) -> usize {
    credit.div_ceil(2)
}

impl<P: Clone> Slot<P> {
    pub(super) fn new() -> Self {
        Self {
            status: WorkerStatus::Starting,
            generation: 0,
            tasks: IdMap::default(),
            seq: 0,
            ended: 0,
            unacked: 0,
            ack_due: 0,
            ack_urgent: false,
            frame_taken: false,
            outbox: VecDeque::new(),
            stop_queued: false,
            said_bye: false,
            kill_taken: false,
            replay: VecDeque::new(),
            cancelling: Vec::new(),
            killed_for_cancel: false,
        }
    }

    pub(super) fn status(&self) -> WorkerStatus {
        self.status
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Started and not exited: it may hold tasks.
    pub(super) fn is_live(&self) -> bool {
        !matches!(self.status, WorkerStatus::Exited | WorkerStatus::Replacing)
    }

    /// Live, not asked to stop and done replaying: it takes new tasks.
    pub(super) fn accepts(&self) -> bool {
        self.is_live() && !self.stop_queued && self.replay.is_empty()
    }

    /// Whether sticky broadcasts are still waiting to be replayed to it.
    pub(super) fn replaying(&self) -> bool {
        self.is_live() && !self.replay.is_empty()
    }

    /// Queues the sticky broadcasts a replacement must receive first.
    pub(super) fn queue_replay(&mut self, payloads: impl IntoIterator<Item = P>) {
        self.replay.extend(payloads);
    }

    /// Sends as many waiting replays as its capacity allows, each under an id from `next_id`.
    pub(super) fn release_replay(
        &mut self,
        capacity: usize,
        mut next_id: impl FnMut() -> TaskId,
    ) -> Vec<TaskId> {
        let mut released = Vec::new();
        while self.tasks.len() < capacity {
            let Some(payload) = self.replay.pop_front() else {
                break;
            };
            let id = next_id();
            self.take(id, payload, Route::Any, 1, true);
            released.push(id);
        }
        released
    }

    pub(super) fn set_replacing(&mut self, replacing: bool) {
        if !self.is_live() {
            self.status = if replacing {
                WorkerStatus::Replacing
            } else {
                WorkerStatus::Exited
            };
        }
    }

    pub(super) fn said_bye(&self) -> bool {
        self.said_bye
    }

    pub(super) fn held(&self) -> usize {
        self.tasks.len()
    }

    pub(super) fn held_ids(&self) -> Vec<TaskId> {
        let mut ids: Vec<_> = self.tasks.iter().map(|(&id, h)| (h.seq, id)).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    pub(super) fn holds(&self, id: TaskId) -> bool {
        self.tasks.contains_key(&id)
    }

    pub(super) fn unacked(&self) -> usize {
        self.unacked
    }

    /// Takes task `id` (sent `attempts` times, this one included, and cancelled at `deadline`
    /// if it has not ended), to go out in order.
    pub(super) fn accept(
        &mut self,
        id: TaskId,
        payload: P,
        route: Route,
        attempts: u32,
        deadline: Option<Instant>,
    ) {
        self.take(id, payload, route, attempts, false);
        if let Some(held) = self.tasks.get_mut(&id) {
            held.deadline = deadline;
        }
    }

    fn take(&mut self, id: TaskId, payload: P, route: Route, attempts: u32, replay: bool) {
        debug_assert!(self.is_live());
        self.seq += 1;
        let held = Held {
            seq: self.seq,
            payload: payload.clone(),
            route,
            attempts,
            replay,
            deadline: None,
        };
        self.tasks.insert(id, held);
        self.outbox.push_back(Transmit::Task { id, payload });
    }

    pub(super) fn ready(&mut self, worker: usize) -> Result<(), Violation> {
        if self.status != WorkerStatus::Starting {
            return Err(Violation::Unexpected {
                worker,
                what: "second handshake",
            });
        }
        self.status = if self.stop_queued {
            WorkerStatus::Draining
        } else {
            WorkerStatus::Ready
        };
        Ok(())
    }

    pub(super) fn output(
        &mut self,
        worker: usize,
        task: Option<TaskId>,
        credit: usize,
    ) -> Result<(), Violation> {
        if let Some(task) = task.filter(|t| !self.tasks.contains_key(t) && !self.is_cancelling(*t))
        {
            return Err(Violation::ForeignOutput { worker, task });
        }
        if self.said_bye {
            return Err(Violation::Unexpected {
                worker,
                what: "output after goodbye",
            });
        }
        if self.unacked >= credit {
            return Err(Violation::CreditExceeded { worker, credit });
        }
        self.unacked += 1;
        Ok(())
    }

    /// Grants `n` result credits past the consumer (a stop's backlog).
    pub(super) fn grant(&mut self, n: usize) {
        if self.is_live() && !self.said_bye {
            self.ack_due = self
                .ack_due
                .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
            self.ack_urgent |= n > 0;
        }
    }

    pub(super) fn ack(&mut self) {
        if self.unacked == 0 {
            return;
        }
        self.unacked -= 1;
        if self.is_live() && !self.said_bye {
            self.ack_due += 1;
        }
    }

    /// Ends task `id`; returns how many tasks (sticky replays aside) this incarnation has
    /// ended, or `None` if `id` was a replay: replaying its state is not work it served.
    pub(super) fn done(&mut self, worker: usize, id: TaskId) -> Result<Option<u64>, Violation> {
        if let Some(at) = self.cancelling.iter().position(|&(c, _)| c == id) {
            // The worker dropped a cancelled task: it ended for the parent when it was cancelled.
            self.cancelling.swap_remove(at);
            return Ok(None);
        }
        match self.tasks.remove(&id) {
            None => return Err(Violation::UnknownTask { worker, task: id }),
            Some(held) if held.replay => return Ok(None),
            Some(_) => {}
        }
        self.ended += 1;
        Ok(Some(self.ended))
    }

    pub(super) fn bye(&mut self, worker: usize) -> Result<(), Violation> {
        let why = if !self.stop_queued {
            "before it was asked to stop"
        } else if !self.tasks.is_empty() || !self.cancelling.is_empty() {
            "while still holding tasks"
        } else if self.said_bye {
            "twice"
        } else {
            self.said_bye = true;
            self.ack_due = 0;
            self.ack_urgent = false;
            return Ok(());
        };
        Err(Violation::EarlyBye { worker, why })
    }

    /// The incarnation is gone: returns the tasks it held, in the order they were accepted.
    pub(super) fn exit(&mut self) -> Vec<(TaskId, Held<P>)> {
        if !self.is_live() {
            return Vec::new();
        }
        self.status = WorkerStatus::Exited;
        self.outbox.clear();
        self.cancelling.clear();
        self.ack_due = 0;
        self.ack_urgent = false;
        self.frame_taken = false;
        let mut held: Vec<_> = self.tasks.drain().collect();
        held.sort_unstable_by_key(|(_, h)| h.seq);
        held
    }

    /// A new incarnation takes the slot; outputs of earlier ones stay unacknowledged, and
    /// `owed` credits go to it at once.
    pub(super) fn replace(&mut self, owed: usize) -> u64 {
        assert!(!self.is_live(), "only an exited worker can be replaced");
        let generation = self.generation + 1;
        let unacked = self.unacked;
        *self = Self::new();
        self.generation = generation;
        self.unacked = unacked;
        self.ack_due = u32::try_from(owed).unwrap_or(u32::MAX);
        self.ack_urgent = owed > 0;
        generation
    }

    pub(super) fn queue_stop(&mut self) {
        self.replay.clear();
        if self.is_live() && !self.stop_queued {
            self.stop_queued = true;
            self.outbox.push_back(Transmit::Stop);
            if self.status == WorkerStatus::Ready {
                self.status = WorkerStatus::Draining;
            }
        }
    }

    /// Cancels task `id`, to be dropped by `deadline`: a task not yet written to the link is
    /// simply withdrawn, a sent one gets a [`Transmit::Cancel`]. Returns whether it held it.
    pub(super) fn cancel(&mut self, id: TaskId, deadline: Option<Instant>) -> bool {
        if self.tasks.remove(&id).is_none() {
            return false;
        }
        let unsent = self
            .outbox
            .iter()
            .position(|t| matches!(t, Transmit::Task { id: queued, .. } if *queued == id));
        match unsent {
            Some(at) => drop(self.outbox.remove(at)),
            None => {
                self.cancelling.push((id, deadline));
                self.outbox.push_back(Transmit::Cancel { id });
            }
        }
        true
    }

    /// The earliest deadline of the tasks it holds.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.tasks.values().filter_map(|h| h.deadline).min()
    }

    /// The tasks it holds whose deadline has come by `now`, oldest first.
    pub(super) fn expired(&self, now: Instant) -> Vec<TaskId> {
        let mut ids: Vec<_> = self
            .tasks
            .iter()
            .filter(|(_, h)| h.deadline.is_some_and(|d| d <= now))
            .map(|(&id, h)| (h.seq, id))
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    pub(super) fn is_cancelling(&self, id: TaskId) -> bool {
        self.cancelling.iter().any(|&(c, _)| c == id)
    }

    /// When the oldest cancelled task must have been dropped, if any is outstanding.
    pub(super) fn cancel_deadline(&self) -> Option<Instant> {
        self.cancelling.iter().filter_map(|&(_, at)| at).min()
    }

    /// Takes the kill of this incarnation for a cancelled task it did not drop by `now`.
    pub(super) fn take_cancel_kill(&mut self, now: Instant) -> Option<TaskId> {
        let &(task, _) = self
            .cancelling
            .iter()
            .find(|&&(_, at)| at.is_some_and(|at| at <= now))?;
        if !self.take_kill() {
            return None;
        }
        self.killed_for_cancel = true;
        Some(task)
    }

    /// Alive and not yet to be killed: a kill taken now would do something.
    pub(super) fn killable(&self) -> bool {
        self.is_live() && !self.kill_taken
    }

    pub(super) fn killed_for_cancel(&self) -> bool {
        self.killed_for_cancel
    }

    pub(super) fn take_kill(&mut self) -> bool {
        if self.killable() {
            self.kill_taken = true;
            true
        } else {
            false
        }
    }

    /// The next frame for the link, then the credits due when they can share a write with
    /// frames just taken or are worth a frame of their own (see [`acks_ready`](Self::acks_ready)).
    pub(super) fn poll_transmit(&mut self, credit: usize) -> Option<Transmit<P>> {
        if let Some(t) = self.outbox.pop_front() {
            self.frame_taken = true;
            return Some(t);
        }
        let along = std::mem::take(&mut self.frame_taken);
        if self.ack_due > 0 && (along || self.acks_ready(credit)) {
            self.ack_urgent = false;
            return Some(Transmit::Ack(std::mem::take(&mut self.ack_due)));
        }
        None
    }

    pub(super) fn has_transmit(&self, credit: usize) -> bool {
        !self.outbox.is_empty() || (self.ack_due > 0 && self.acks_ready(credit))
    }

    /// Whether the credits due are worth a frame of their own, for a worker whose result credit
    /// is `credit`: they are urgent, or make half the credit, or the worker has less than half
    /// of its credit left (so a worker that used it all gets back whatever was read at once).
    fn acks_ready(&self, credit: usize) -> bool {
        let batch = ack_batch(credit);
        let due = self.ack_due as usize;
        let left = credit.saturating_sub(self.unacked + due);
        self.ack_urgent || due >= batch || left < batch
    }
}
