//! Placement over members that come and go: the sans-IO routing, backlog and task table of a
//! pool whose workers are remote members known by a key (a name), rather than numbered slots.
//!
//! [`Members`] decides which member a task goes to, whether that member has room in its
//! backlog, which member holds each task, and what becomes of a task when its member is gone:
//! sent on to another member with room, kept waiting for a member to join, lost (it was for
//! that member only, or the pool is stopping), or given up on after as many deliveries as the
//! pool allows. The driver (the NATS transport's parent) carries the decisions out: it stores
//! the tasks on the broker, waits where told to wait, and ends the handles.
//!
//! Invariants, checked by the testkit's model check (`looppool_testkit::members`):
//! 1. a task is held by exactly one member, or waits, until it ends; it ends once;
//! 2. no placement ([`place`](Members::place)) or move of a task taken back gives a member
//!    more tasks than its backlog (a broadcast's copies and tasks recorded for a joining
//!    member count in it, room or not);
//! 3. untargeted tasks go to the members in turn, in join order, and a task taken back to the
//!    next member with room; a task for one member never moves to another;
//! 4. a task taken back after `max_deliveries` deliveries is given up on;
//! 5. once closed, [`place`](Members::place) refuses, and a task taken back with no member to
//!    take it ends at once rather than wait (one with a member there still moves to it);
//! 6. a cancelled task ([`cancel`](Members::cancel)) never goes to another member: its member
//!    keeps it, in its backlog, until it reports the end, and one taken back is dropped;
//! 7. a task waiting for a member waits the pool's wait from the moment its gone member's last
//!    task was taken back (the member may join again only then), or, once it found members
//!    there but all busy (room is then what it waits for), from when it next finds none; and no
//!    longer: offered to the members past it with none there, it is given up on
//!    ([`TakenBack::Expired`]).

use super::TaskId;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod answers;
mod back;
mod faults;

pub use answers::{Cancelled, For, TakenBack, Unplaced};
pub use faults::Fault;

#[derive(Debug, Clone)]
struct Member<K> {
    key: K,
    limit: usize,
    held: usize,
}

#[derive(Debug, Clone)]
struct Placed<K> {
    holder: K,
    /// Taken back from `holder` with no member to take it: nobody holds it.
    waiting: bool,
    any: bool,
    cancelled: bool,
    /// Waiting: until when, once its gone member's last task was taken back.
    until: Option<Instant>,
}

/// The routing, backlogs and task table of a pool of members. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Members<K> {
    live: Vec<Member<K>>,
    cursor: usize,
    tasks: BTreeMap<TaskId, Placed<K>>,
    max_deliveries: u32,
    /// How long a task taken back waits for a member to join.
    wait: Duration,
    closed: bool,
    #[cfg(feature = "fault-injection")]
    fault: Option<Fault>,
}

impl<K: Clone + Eq> Members<K> {
    /// No member yet; a task taken back after `max_deliveries` deliveries is given up on, and
    /// one taken back with no member there waits up to `wait` for one to join.
    pub fn new(max_deliveries: u32, wait: Duration) -> Self {
        Self {
            live: Vec::new(),
            cursor: 0,
            tasks: BTreeMap::new(),
            max_deliveries: max_deliveries.max(1),
            wait,
            closed: false,
            #[cfg(feature = "fault-injection")]
            fault: None,
        }
    }

    /// Member `key` joins with a backlog of `limit` tasks: tasks are routed to it from now on.
    /// Tasks recorded for it meanwhile ([`record`](Self::record)) count in its backlog.
    /// Returns `false`, changing nothing, if it is live already.
    ///
    /// A key that left joins again only once every task its earlier run held was taken back
    /// ([`take_back`](Self::take_back)): those still held would count in the new run's
    /// backlog, and could no longer be taken back, the key being live.
    pub fn join(&mut self, key: K, limit: usize) -> bool {
        if self.is_live(&key) {
            return false;
        }
        let held = self.held_by(&key);
        self.live.push(Member { key, limit, held });
        true
    }

    /// Member `key` is gone: nothing more is routed to it. The tasks it holds stay its until
    /// taken back ([`take_back`](Self::take_back)). Returns whether it holds any.
    pub fn leave(&mut self, key: &K) -> bool {
        if let Some(k) = self.position(key) {
            self.live.remove(k);
            if k < self.cursor {
                self.cursor -= 1;
            }
        }
        self.held_by(key) > 0
    }

    /// The pool is stopping: nothing is placed from now on, and tasks taken back with no
    /// member to take them end at once.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Places task `id` for `target` if a member has room, and returns that member.
    ///
    /// # Panics
    /// If `id` is in the table already.
    pub fn place(&mut self, id: TaskId, target: For<'_, K>) -> Result<K, Unplaced<K>> {
        assert!(!self.tasks.contains_key(&id), "task {id} placed twice");
        if self.closed {
            return Err(Unplaced::Closed);
        }
        let k = match target {
            For::Any if self.live.is_empty() => return Err(Unplaced::NoMember),
            For::Any => {
                // In turn: an even spread, whatever each member's pace.
                let k = self.cursor % self.live.len();
                if self.live[k].held >= self.live[k].limit {
                    return Err(Unplaced::Full(self.live[k].key.clone()));
                }
                k
            }
            For::Member(key) => match self.position(key) {
                Some(k) if self.live[k].held < self.live[k].limit => k,
                Some(_) => return Err(Unplaced::Full(key.clone())),
                None => return Err(Unplaced::Unknown),
            },
        };
        let any = matches!(target, For::Any);
        Ok(self.give(id, k, any))
    }

    /// Places one copy of a broadcast on every live member, room or not: task ids from `ids`.
    pub fn broadcast(&mut self, mut ids: impl FnMut() -> TaskId) -> Vec<(TaskId, K)> {
        (0..self.live.len())
            .map(|k| {
                let id = ids();
                (id, self.give(id, k, false))
            })
            .collect()
    }

    /// Records task `id` for member `key` only, whether or not it is live (a joining member's
    /// sticky broadcasts): counted in its backlog once it joins.
    pub fn record(&mut self, id: TaskId, key: K) {
        if let Some(k) = self.position(&key) {
            self.live[k].held += 1;
        }
        let placed = Placed {
            holder: key,
            waiting: false,
            any: false,
            cancelled: false,
            until: None,
        };
        assert!(
            self.tasks.insert(id, placed).is_none(),
            "task {id} placed twice"
        );
    }

    /// Whether member `key` holds task `id`: its end and outputs are taken from it only.
    pub fn holds(&self, id: TaskId, key: &K) -> bool {
        matches!(self.tasks.get(&id), Some(p) if !p.waiting && p.holder == *key)
    }

    /// The member holding task `id`, or that held it last if it waits.
    pub fn holder(&self, id: TaskId) -> Option<&K> {
        self.tasks.get(&id).map(|p| &p.holder)
    }

    /// Tasks member `key` holds (live or gone).
    pub fn held_by(&self, key: &K) -> usize {
        let tasks = self.tasks.values();
        tasks.filter(|p| !p.waiting && p.holder == *key).count()
    }

    /// Ids of the tasks member `key` holds.
    pub fn tasks_of(&self, key: &K) -> Vec<TaskId> {
        let tasks = self.tasks.iter();
        let held = tasks.filter(|(_, p)| !p.waiting && p.holder == *key);
        held.map(|(id, _)| *id).collect()
    }

    /// Tasks live member `key` holds, if it is live.
    pub fn backlog(&self, key: &K) -> Option<usize> {
        self.position(key).map(|k| self.live[k].held)
    }

    /// Live members, in join order.
    pub fn live(&self) -> impl Iterator<Item = &K> {
        self.live.iter().map(|m| &m.key)
    }

    /// Unended tasks.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether every task ended.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Task `id` ended (or was withdrawn): it frees its place. Returns the member that held it
    /// (or last held it, if it waited), if it was in the table.
    pub fn end(&mut self, id: TaskId) -> Option<K> {
        let p = self.tasks.remove(&id)?;
        if !p.waiting && !self.planted(Fault::EndKeepsPlace) {
            if let Some(k) = self.position(&p.holder) {
                self.live[k].held = self.live[k].held.saturating_sub(1);
            }
        }
        Some(p.holder)
    }

    /// The program cancelled task `id`. One that waits for a member leaves the table at once;
    /// one a member holds stays that member's, in its backlog, until the member reports its
    /// end ([`end`](Self::end)) or, gone, has it taken back ([`TakenBack::Dropped`]): it is
    /// never sent to another member.
    pub fn cancel(&mut self, id: TaskId) -> Cancelled<K> {
        match self.tasks.get_mut(&id) {
            Some(p) if p.cancelled => Cancelled::NotHeld,
            Some(p) if p.waiting => {
                self.tasks.remove(&id);
                Cancelled::Ended
            }
            Some(p) => {
                p.cancelled = true;
                let holder = p.holder.clone();
                if self.planted(Fault::CancelFreesPlace) {
                    if let Some(k) = self.position(&holder) {
                        self.live[k].held = self.live[k].held.saturating_sub(1);
                    }
                }
                Cancelled::Tell(holder)
            }
            None => Cancelled::NotHeld,
        }
    }

    /// Whether task `id` was cancelled and waits for its member's end.
    pub fn is_cancelled(&self, id: TaskId) -> bool {
        self.tasks.get(&id).is_some_and(|p| p.cancelled)
    }

    fn give(&mut self, id: TaskId, k: usize, any: bool) -> K {
        if any && !self.planted(Fault::StuckTurn) {
            self.cursor = k + 1;
        }
        let member = &mut self.live[k];
        member.held += 1;
        let key = member.key.clone();
        let placed = Placed {
            holder: key.clone(),
            waiting: false,
            any,
            cancelled: false,
            until: None,
        };
        self.tasks.insert(id, placed);
        key
    }

    /// The next live member with room, from the cursor on.
    fn roomy(&self) -> Option<usize> {
        let n = self.live.len();
        (0..n)
            .map(|j| (self.cursor + j) % n)
            .find(|&k| self.live[k].held < self.live[k].limit)
    }

    fn position(&self, key: &K) -> Option<usize> {
        self.live.iter().position(|m| m.key == *key)
    }

    fn is_live(&self, key: &K) -> bool {
        self.position(key).is_some()
    }
}
