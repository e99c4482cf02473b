//! The reference's rules for cancellation and deadlines: a cancelled task ends at once and
//! frees its place; a worker that keeps a cancelled task past the grace is killed, and the
//! other tasks it held are retried whatever their retries.

use super::reference::{End, RefPhase, Reference, Sent};
use super::retry::{RefEvent, RefKill};
use looppool_core::TaskId;

/// Ticks a worker has to drop a cancelled task.
pub const CANCEL_GRACE: u64 = 5;

impl Reference {
    /// A submission (round-robin or targeted) cancelled if it has not ended `ticks` from now.
    pub fn submit_within(
        &mut self,
        target: Option<usize>,
        ticks: u64,
    ) -> Result<(usize, TaskId), super::RefRefusal> {
        let (worker, id) = self.submit(target)?;
        self.deadlines.insert(id, self.now + ticks);
        Ok((worker, id))
    }

    /// Cancels `id`: returns the worker that held it (or that it was retried for), if it had
    /// not ended.
    pub fn cancel(&mut self, id: TaskId) -> Option<usize> {
        self.cancel_as(id, End::Cancelled, true)
    }

    /// Cancels `id`, ending it as `how`; with `place`, the room it made goes to waiting retries.
    fn cancel_as(&mut self, id: TaskId, how: End, place: bool) -> Option<usize> {
        if let Some(at) = self.deferred.iter().position(|&(d, _)| d == id) {
            let (_, from) = self.deferred.remove(at).expect("found");
            self.ended.insert(id, how);
            return Some(from);
        }
        let worker = (0..self.size()).find(|&k| self.workers[k].holding.contains(&id))?;
        let grace = self.now + CANCEL_GRACE;
        let w = &mut self.workers[worker];
        w.holding.retain(|&t| t != id);
        w.replays_held.retain(|&t| t != id);
        let unsent = (w.delivered..w.sent.len()).find(|&i| w.sent[i] == Sent::Task(id));
        match unsent {
            Some(at) => drop(w.sent.remove(at)),
            None => {
                w.sent.push(Sent::Cancel(id));
                w.cancelling.push((id, grace));
            }
        }
        self.ended.insert(id, how);
        if place && self.phase == RefPhase::Running {
            self.place_deferred();
        }
        Some(worker)
    }

    /// The worker reports the end of a task that was cancelled after it was sent.
    pub fn finish_cancelled(&mut self, worker: usize, id: TaskId) {
        self.workers[worker].cancelling.retain(|&(t, _)| t != id);
        self.place_deferred();
    }

    /// Cancels every task whose deadline has come.
    pub(super) fn expire(&mut self) {
        let now = self.now;
        let due = |r: &Reference, id: &TaskId| r.deadlines.get(id).is_some_and(|&d| d <= now);
        for k in 0..self.size() {
            let expired: Vec<TaskId> = self.workers[k]
                .holding
                .iter()
                .copied()
                .filter(|id| due(self, id))
                .collect();
            for id in expired {
                self.cancel_as(id, End::TimedOut, false);
                self.events.push(RefEvent::Expired(k, id));
            }
        }
        let expired: Vec<(TaskId, usize)> = self
            .deferred
            .iter()
            .copied()
            .filter(|(id, _)| due(self, id))
            .collect();
        for (id, from) in expired {
            self.deferred.retain(|&(d, _)| d != id);
            self.ended.insert(id, End::TimedOut);
            self.events.push(RefEvent::Expired(from, id));
        }
        if self.phase == RefPhase::Running {
            self.place_deferred();
        }
    }

    /// Kills each worker that kept a cancelled task past the grace.
    pub(super) fn kill_cancel_keepers(&mut self) {
        let now = self.now;
        for k in 0..self.size() {
            let w = &mut self.workers[k];
            let overdue = w.cancelling.iter().find(|&&(_, at)| at <= now).copied();
            if let (Some(_), true, false) = (overdue, w.alive, w.killed) {
                w.killed = true;
                w.killed_for_cancel = true;
                self.events.push(RefEvent::Kill(k, RefKill::Cancel));
            }
        }
    }
}
