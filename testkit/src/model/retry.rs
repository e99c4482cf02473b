//! The reference's decisions as events, and its rules for retries, stalls and memory.

use super::reference::{End, RefPhase, RefRefusal, Reference, MEMORY_LIMIT, STALL_LIMIT};
use looppool_core::TaskId;

/// Why the reference kills a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKill {
    /// The stop deadline passed.
    Stop,
    /// The pool was killed.
    Pool,
    /// Its loop was silent past the stall limit while it held tasks.
    Stall,
    /// It kept a cancelled task past the grace.
    Cancel,
}

/// Why the reference loses a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefLoss {
    /// Held by its worker when it died, and not retried.
    Died,
    /// Waiting for a retry when the stop began.
    Stopped,
    /// No worker can take its retry.
    Unroutable,
}

/// A decision, as the reference makes it, in the order it makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefEvent {
    /// Kill this worker.
    Kill(usize, RefKill),
    /// Relaunch this worker after this many ticks.
    Relaunch(usize, u64),
    /// Give this worker up after this many quick failures, until this tick.
    GaveUp(usize, u32, u64),
    /// This task, last held by this worker, is lost.
    Lost(usize, TaskId, RefLoss),
    /// This task, held by the first worker when it died, is now held by the second.
    Retried(TaskId, usize, usize),
    /// This worker retires.
    Retiring(usize),
    /// This task, held by this worker (or waiting for its retry), reached its deadline.
    Expired(usize, TaskId),
}

impl RefEvent {
    /// The invariant a disagreement about this event breaks.
    pub fn label(&self) -> &'static str {
        match self {
            RefEvent::Lost(_, _, RefLoss::Died) => "exactly-once",
            RefEvent::Lost(..) | RefEvent::Retried(..) => "retry",
            RefEvent::Relaunch(..) | RefEvent::GaveUp(..) => "restart",
            RefEvent::Kill(_, RefKill::Stall) => "stall",
            RefEvent::Kill(_, RefKill::Cancel) => "cancel",
            RefEvent::Expired(..) => "deadline",
            RefEvent::Kill(..) => "stop",
            RefEvent::Retiring(..) => "recycle",
        }
    }
}

impl Reference {
    pub(super) fn lose(&mut self, id: TaskId, worker: usize, why: RefLoss) {
        self.ended.insert(id, End::Lost);
        self.events.push(RefEvent::Lost(worker, id, why));
    }

    /// Sends waiting retries to workers with room, oldest first; at a stop, or with no worker
    /// to take one, they are lost.
    pub fn place_deferred(&mut self) {
        for _ in 0..self.deferred.len() {
            let Some((id, from)) = self.deferred.pop_front() else {
                break;
            };
            if self.phase != RefPhase::Running {
                self.lose(id, from, RefLoss::Stopped);
                continue;
            }
            let route = self.routes[&id];
            match self.choose(route) {
                Ok(to) => {
                    self.take(to, id, route);
                    *self.attempts.get_mut(&id).expect("an accepted task") += 1;
                    if route.is_none() {
                        self.cursor = (to + 1) % self.size();
                    }
                    self.events.push(RefEvent::Retried(id, from, to));
                }
                Err(RefRefusal::Full(_) | RefRefusal::Replacing(_)) => {
                    self.deferred.push_back((id, from))
                }
                Err(_) => self.lose(id, from, RefLoss::Unroutable),
            }
        }
    }

    /// The worker's loop has been silent for `ticks`: past the stall limit, while it holds
    /// tasks, it is to be killed (once).
    pub fn silence(&mut self, worker: usize, ticks: u64) {
        let w = &mut self.workers[worker];
        if ticks > STALL_LIMIT && w.alive && !w.holding.is_empty() && !w.killed {
            w.killed = true;
            self.events.push(RefEvent::Kill(worker, RefKill::Stall));
        }
    }

    /// The worker's memory was measured at `bytes`: past the limit it retires.
    pub fn memory(&mut self, worker: usize, bytes: u64) -> bool {
        bytes > MEMORY_LIMIT && self.retire(worker)
    }
}
