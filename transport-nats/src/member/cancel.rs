//! Tasks the parent cancelled: those running are aborted in the local pool, those not yet
//! received are dropped when they arrive.

use super::serve::{lock, Serving};
use looppool_core::Worker;
use std::collections::{HashMap, HashSet, VecDeque};
use tokio::sync::oneshot;

/// The tasks of a member's run that can be cancelled, and those cancelled before they came.
#[derive(Debug, Default)]
pub(super) struct Cancels {
    /// Tasks in the local pool, by parent id: a send aborts the task.
    running: HashMap<u64, oneshot::Sender<()>>,
    /// Tasks cancelled before they came, oldest first.
    early: VecDeque<u64>,
    early_set: HashSet<u64>,
}

impl Cancels {
    /// Most tasks remembered as cancelled before they came: a cancel that arrives after its
    /// task ended here is remembered too, and forgotten past this many.
    const EARLY: usize = 4096;

    /// Task `id` runs in the local pool: the receiver hears when it is cancelled.
    pub(super) fn watch(&mut self, id: u64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.running.insert(id, tx);
        rx
    }

    /// Task `id` ended in the local pool.
    pub(super) fn done(&mut self, id: u64) {
        self.running.remove(&id);
    }

    /// Whether task `id`, just received, was cancelled before it came.
    pub(super) fn take_early(&mut self, id: u64) -> bool {
        if self.early_set.remove(&id) {
            self.early.retain(|e| *e != id);
            true
        } else {
            false
        }
    }

    /// The parent cancelled task `id`: aborts it if it runs, else remembers it.
    fn cancel(&mut self, id: u64, received: bool) {
        if let Some(abort) = self.running.remove(&id) {
            let _ = abort.send(());
        } else if !received && self.early_set.insert(id) {
            self.early.push_back(id);
            if self.early.len() > Self::EARLY {
                if let Some(old) = self.early.pop_front() {
                    self.early_set.remove(&old);
                }
            }
        }
    }
}

impl<W: Worker> Serving<W> {
    /// The parent cancelled tasks `ids`.
    pub(super) fn cancel(&self, ids: &[u64]) {
        let running = lock(&self.running);
        let mut cancels = lock(&self.cancels);
        for id in ids {
            // Received and not in the local pool: it is ending already.
            cancels.cancel(*id, running.contains_key(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cancels;

    #[test]
    fn a_cancel_aborts_a_running_task_or_waits_for_the_task() {
        let mut c = Cancels::default();
        let mut aborted = c.watch(1);
        c.cancel(1, true);
        assert_eq!(aborted.try_recv(), Ok(()));
        c.cancel(2, false);
        assert!(c.take_early(2));
        assert!(!c.take_early(2), "dropped once");
        // Received, not running: ending already, nothing to remember.
        c.cancel(3, true);
        assert!(!c.take_early(3));
    }

    #[test]
    fn cancels_of_tasks_that_never_come_are_bounded() {
        let mut c = Cancels::default();
        for id in 0..(Cancels::EARLY as u64 + 10) {
            c.cancel(id, false);
        }
        assert_eq!(c.early.len(), Cancels::EARLY);
        assert_eq!(c.early_set.len(), Cancels::EARLY);
        assert!(!c.take_early(0), "the oldest is forgotten");
        assert!(c.take_early(Cancels::EARLY as u64 + 9));
    }
}
