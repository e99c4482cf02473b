//! The reference for the placement over members: the rules, written plainly.

use super::Key;
use looppool_core::state::members::{Cancelled, TakenBack};
use looppool_core::TaskId;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub(super) struct RefTask {
    pub(super) holder: Key,
    pub(super) waiting: bool,
    pub(super) any: bool,
    pub(super) cancelled: bool,
    /// Waiting: until when (ms on the run's clock), once its gone member held no more.
    pub(super) until: Option<u64>,
}

/// The reference: the rules, written plainly.
#[derive(Debug, Default)]
pub(super) struct Reference {
    /// Live members in join order, with their limits.
    pub(super) live: Vec<(Key, usize)>,
    pub(super) cursor: usize,
    pub(super) tasks: BTreeMap<TaskId, RefTask>,
    pub(super) closed: bool,
    /// The run's clock, in ms.
    pub(super) now: u64,
}

impl Reference {
    pub(super) fn held(&self, key: Key) -> usize {
        let tasks = self.tasks.values();
        tasks.filter(|t| !t.waiting && t.holder == key).count()
    }

    pub(super) fn limit(&self, key: Key) -> Option<usize> {
        self.live.iter().find(|(k, _)| *k == key).map(|(_, l)| *l)
    }

    /// The next live member with room from the cursor, round in join order.
    pub(super) fn roomy(&self) -> Option<usize> {
        let n = self.live.len();
        (0..n)
            .map(|j| (self.cursor + j) % n)
            .find(|&i| self.held(self.live[i].0) < self.live[i].1)
    }

    pub(super) fn give(&mut self, id: TaskId, i: usize, any: bool) -> Key {
        let key = self.live[i].0;
        if any {
            self.cursor = i + 1;
        }
        let task = RefTask {
            holder: key,
            waiting: false,
            any,
            cancelled: false,
            until: None,
        };
        self.tasks.insert(id, task);
        key
    }

    /// A task for `key` only, live or not.
    pub(super) fn record(&mut self, id: TaskId, key: Key) {
        let task = RefTask {
            holder: key,
            waiting: false,
            any: false,
            cancelled: false,
            until: None,
        };
        self.tasks.insert(id, task);
    }

    /// The program cancels task `id`: one waiting ends, one held stays with its member.
    pub(super) fn cancel(&mut self, id: TaskId) -> Cancelled<Key> {
        let task = self.tasks.get_mut(&id).expect("under way");
        if task.cancelled {
            Cancelled::NotHeld
        } else if task.waiting {
            self.tasks.remove(&id);
            Cancelled::Ended
        } else {
            task.cancelled = true;
            Cancelled::Tell(task.holder)
        }
    }

    /// `from` holds no more tasks: its tasks waiting for a member wait `wait` from now.
    pub(super) fn arm(&mut self, from: Key, wait: u64) {
        if self.held(from) > 0 {
            return;
        }
        let now = self.now;
        let waiting = self.tasks.values_mut();
        for t in waiting.filter(|t| t.waiting && t.holder == from && t.until.is_none()) {
            t.until = Some(now + wait);
        }
    }

    pub(super) fn move_on(&mut self, id: TaskId) -> TakenBack<Key> {
        if let Some(i) = self.roomy() {
            return TakenBack::To(self.give(id, i, true));
        }
        if !self.live.is_empty() {
            return TakenBack::Busy;
        }
        if self.closed {
            return TakenBack::Stopped;
        }
        self.tasks.get_mut(&id).expect("under way").waiting = true;
        TakenBack::Waiting
    }
}
