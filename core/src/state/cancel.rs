//! Cancelling tasks: a cancelled task ends for the parent at once and frees its worker's
//! capacity; the worker is told to drop it, and is killed if it does not within the grace.

use super::{Event, Phase, PoolState, TaskId};
use std::time::{Duration, Instant};

impl<P: Clone> PoolState<P> {
    /// Kills a worker that has not dropped a cancelled task `grace` after the cancellation
    /// (see [`handle_cancel`](Self::handle_cancel)); `None`, the default, never: a task that
    /// never yields then keeps its worker until it ends.
    pub fn set_cancel_grace(&mut self, grace: Option<Duration>) {
        self.cancel_grace = grace;
    }

    /// Cancels task `id` at `now`. It ends now (the caller reports it cancelled) and no longer
    /// counts against its worker's capacity; a task not yet written to the link is withdrawn,
    /// a sent one is followed by a [`Transmit::Cancel`](super::Transmit::Cancel), the worker's
    /// later end of it is accepted and its outputs are for discarding
    /// ([`is_cancelling`](Self::is_cancelling)). A retry waiting for room is dropped. Returns
    /// the worker that held it, or `None` if no worker holds it (it ended already).
    pub fn handle_cancel(&mut self, id: TaskId, now: Instant) -> Option<usize> {
        if let Some(at) = self.deferred.iter().position(|d| d.id == id) {
            return self.deferred.remove(at).map(|d| d.from);
        }
        let deadline = self.cancel_grace.and_then(|grace| now.checked_add(grace));
        let worker = (0..self.slots.len()).find(|&k| self.slots[k].holds(id))?;
        self.slots[worker].cancel(id, deadline);
        if self.phase == Phase::Running {
            self.place_deferred();
        }
        Some(worker)
    }

    /// Whether `worker` was sent task `id`, which was then cancelled, and has not yet reported
    /// dropping it: its outputs are for discarding.
    pub fn is_cancelling(&self, worker: usize, id: TaskId) -> bool {
        self.slots[worker].is_cancelling(id)
    }
}

impl<P: Clone> PoolState<P> {
    /// Cancels every task whose deadline has come by `now` ([`Event::Expired`]).
    pub(super) fn expire(&mut self, now: Instant) {
        for worker in 0..self.slots.len() {
            for id in self.slots[worker].expired(now) {
                let grace = self.cancel_grace.and_then(|g| now.checked_add(g));
                self.slots[worker].cancel(id, grace);
                self.events.push_back(Event::Expired { worker, id });
            }
        }
        let mut kept = std::collections::VecDeque::new();
        while let Some(d) = self.deferred.pop_front() {
            if d.held.deadline.is_some_and(|at| at <= now) {
                self.events.push_back(Event::Expired {
                    worker: d.from,
                    id: d.id,
                });
            } else {
                kept.push_back(d);
            }
        }
        self.deferred = kept;
        if self.phase == Phase::Running {
            self.place_deferred();
        }
    }
}
