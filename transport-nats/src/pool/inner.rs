//! The pool's table under its lock: live members' runs, the tasks under way with their
//! handles, and the core's [`Members`] placement, which decides where each task goes and
//! which member holds it.

use super::handle::MemberInfo;
use super::sessions::{Departed, Session};
use crate::error::RawTaskError;
use crate::wire::EndMsg;
use futures_channel::oneshot;
use looppool_core::state::members::{For, Members, Unplaced};
use looppool_core::{CancelSink, MemberTask, TaskError, TaskHandle};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

/// A task under way: its handle's side and what arrived for it.
pub(super) struct Pending {
    pub(super) tx: Option<oneshot::Sender<Result<(), RawTaskError>>>,
    /// Where the task is, as its handle tells.
    pub(super) at: Arc<MemberTask>,
    /// Its deliveries to members, as its handle tells.
    pub(super) deliveries: Arc<AtomicU32>,
    /// Outputs received per member that ran it.
    pub(super) seen: Vec<(String, u32)>,
    /// An end that arrived before all the outputs it counts.
    pub(super) parked: Option<(String, EndMsg)>,
    /// Why an output of the task could not be delivered: the task then fails.
    pub(super) dropped: Option<String>,
    /// Deliveries to its member it handed back unstarted when it left: not counted.
    pub(super) returned: u32,
    /// Sent by a call: its outputs go to the call (`Shared::calls`), never to the stream.
    pub(super) call: bool,
    /// Its deadline's timer, stopped when it ends.
    pub(super) timer: Option<tokio::task::AbortHandle>,
}

impl Pending {
    /// The task went to `member`. What a run of the same name counted before is forgotten:
    /// the new run's end counts its own outputs.
    pub(super) fn moved_to(&mut self, member: &str, deliveries: u32) {
        self.seen.retain(|(m, _)| m != member);
        if matches!(&self.parked, Some((m, _)) if m == member) {
            self.parked = None;
        }
        self.deliveries.store(deliveries, Ordering::Relaxed);
        self.at.set_member(member);
        self.at.set_worker(0);
    }

    pub(super) fn seen_from(&self, member: &str) -> u32 {
        self.seen
            .iter()
            .find(|(m, _)| m == member)
            .map_or(0, |(_, n)| *n)
    }
}

/// A live member's run.
pub(super) struct Live {
    pub(super) info: MemberInfo,
    /// The member's run, from its join request.
    pub(super) nonce: u64,
    pub(super) last_seen: Instant,
    /// The last heartbeat's number.
    pub(super) alive_seq: u64,
}

pub(super) struct Sticky {
    pub(super) key: String,
    /// Which setting this is (the value of `Inner::sticky_set` then).
    pub(super) set: u64,
    pub(super) payload: Vec<u8>,
}

pub(super) struct Inner {
    /// Why the pool failed for good (another parent took it over): it acts no more.
    pub(super) failed: Option<String>,
    /// Why submissions fail now: the broker is out of reach past the broker timeout.
    pub(super) broker_gone: Option<String>,
    /// The pool's streams are being made anew: joins wait.
    pub(super) recovering: bool,
    next_id: u64,
    /// Live members' runs, in join order (the placement's order).
    pub(super) members: Vec<Live>,
    /// Where tasks go and who holds them.
    pub(super) placement: Members<String>,
    pub(super) tasks: HashMap<u64, Pending>,
    /// Sticky broadcasts, in the order they were last set.
    pub(super) sticky: Vec<Sticky>,
    /// How many sticky broadcasts were ever set.
    pub(super) sticky_set: u64,
    /// Members gone whose consumers are not deleted yet (their tasks are being taken back).
    pub(super) reclaiming: HashSet<String>,
    /// The last run of each member name that joined.
    pub(super) sessions: HashMap<String, Session>,
    pub(super) departed: Departed,
    /// Where handles cancel: the pool's shared state.
    canceller: Weak<dyn CancelSink>,
}

impl Inner {
    /// An empty pool that gives up on a task after `max_deliveries` deliveries, and on a task
    /// waiting for a member after `wait`, whose handles cancel through `canceller`.
    pub(super) fn new(
        max_deliveries: u32,
        wait: std::time::Duration,
        canceller: Weak<dyn CancelSink>,
    ) -> Self {
        Self {
            failed: None,
            broker_gone: None,
            recovering: false,
            next_id: 0,
            members: Vec::new(),
            placement: Members::new(max_deliveries, wait),
            tasks: HashMap::new(),
            sticky: Vec::new(),
            sticky_set: 0,
            reclaiming: HashSet::new(),
            sessions: HashMap::new(),
            departed: Departed::default(),
            canceller,
        }
    }

    pub(super) fn live(&self, member: &str) -> Option<usize> {
        self.members.iter().position(|m| m.info.name == member)
    }

    /// Whether the pool is stopping: nothing new is placed.
    pub(super) fn closed(&self) -> bool {
        self.placement.is_closed()
    }

    /// Whether `member` holds task `id`: its end and outputs are taken from it only.
    pub(super) fn holds(&self, id: u64, member: &str) -> bool {
        self.placement.holds(id, &member.to_string())
    }

    /// Places a new task for `target` on a member with room; returns its id, that member and
    /// its handle.
    pub(super) fn place<E>(
        &mut self,
        target: For<'_, String>,
    ) -> Result<(u64, String, TaskHandle<E>), Unplaced<String>> {
        let id = self.next_id + 1;
        let member = self.placement.place(id, target)?;
        self.next_id = id;
        let handle = self.pending(id, &member);
        Ok((id, member, handle))
    }

    /// Places one copy of a broadcast on every live member.
    pub(super) fn broadcast<E>(&mut self) -> Vec<(u64, String, TaskHandle<E>)> {
        let mut next = self.next_id;
        let placed = self.placement.broadcast(|| {
            next += 1;
            next
        });
        self.next_id = next;
        let handles = placed.into_iter().map(|(id, member)| {
            let handle = self.pending(id, &member);
            (id, member, handle)
        });
        handles.collect()
    }

    /// Records a task for `member` only, live or joining (its sticky broadcasts), with no
    /// handle: the program did not ask for it.
    pub(super) fn record(&mut self, member: &str) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.placement.record(id, member.into());
        let handle = self.pending::<()>(id, member);
        if let Some(p) = self.tasks.get_mut(&id) {
            p.tx = None;
        }
        drop(handle);
        id
    }

    fn pending<E>(&mut self, id: u64, member: &str) -> TaskHandle<E> {
        let at = Arc::new(MemberTask::new(member));
        let deliveries = Arc::new(AtomicU32::new(0));
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            tx: Some(tx),
            at: at.clone(),
            deliveries: deliveries.clone(),
            seen: Vec::new(),
            parked: None,
            dropped: None,
            returned: 0,
            call: false,
            timer: None,
        };
        self.tasks.insert(id, pending);
        TaskHandle::of_member(id, rx, deliveries, at, self.canceller.clone())
    }

    /// Ends every task under way with the error `error` makes for the member holding it.
    pub(super) fn end_all(&mut self, error: impl Fn(&str) -> RawTaskError) {
        let ids: Vec<(u64, String)> = self
            .tasks
            .keys()
            .map(|id| (*id, self.placement.holder(*id).cloned().unwrap_or_default()))
            .collect();
        for (id, member) in ids {
            let error = error(&member);
            self.finish(id, &member, 0, Err(error));
        }
    }

    /// Ends task `id` with `result`, as reported by (or lost with) `member`.
    pub(super) fn finish(
        &mut self,
        id: u64,
        member: &str,
        deliveries: u32,
        result: Result<(), RawTaskError>,
    ) {
        let Some(mut p) = self.tasks.remove(&id) else {
            return;
        };
        let cancelled = self.placement.is_cancelled(id);
        self.placement.end(id);
        if let Some(timer) = p.timer.take() {
            timer.abort();
        }
        p.at.set_member(member);
        p.deliveries.fetch_max(deliveries, Ordering::Relaxed);
        let result = match (result, p.dropped.take()) {
            (Ok(()), Some(why)) => Err(TaskError::Codec {
                message: format!("an output of the task could not be delivered: {why}"),
            }),
            (result, _) => result,
        };
        match p.tx.take() {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None if cancelled => {}
            None => {
                if let Err(e) = result {
                    // The worker's error stays encoded: its type is the pool's, not this table's.
                    let e = e.map(|bytes| format!("the worker's error ({} bytes)", bytes.len()));
                    tracing::warn!(member, task = id, "sticky broadcast for a new member: {e}");
                }
            }
        }
    }

    /// Forgets a task the broker did not take.
    pub(super) fn withdraw(&mut self, id: u64) {
        if let Some(timer) = self.tasks.remove(&id).and_then(|p| p.timer) {
            timer.abort();
        }
        self.placement.end(id);
    }
}
