//! The pool's bookkeeping, and the parent's side of joining, leaving and taking tasks back.

use super::handle::{Delivery, MemberEvent, MemberInfo, Status, TaskHandle};
use super::sessions::{Departed, Session};
use super::Settings;
use crate::broker::{self, Broker, PublishFailure};
use crate::error::TaskError;
use crate::seal::{Refusals, Sealer};
use crate::wire::{Control, Credit, CtlMsg, EndMsg, Names, TaskMsg};
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::AbortHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// Untargeted: goes to another member if its member dies.
    Any,
    /// Targeted or broadcast: lost with its member.
    Member,
}

pub(super) struct Pending {
    pub(super) member: String,
    pub(super) route: Route,
    pub(super) tx: Option<oneshot::Sender<Result<(), TaskError>>>,
    pub(super) status: Arc<Mutex<Status>>,
    /// Outputs received per member that ran it.
    pub(super) seen: Vec<(String, u32)>,
    /// An end that arrived before all the outputs it counts.
    pub(super) parked: Option<(String, EndMsg)>,
    /// Why an output of the task could not be delivered: the task then fails.
    pub(super) dropped: Option<String>,
    /// Taken back from `member`, which left, and waiting for a member to take it: no member
    /// holds it.
    pub(super) waiting: bool,
    /// Deliveries to `member` it handed back unstarted when it left: not counted.
    pub(super) returned: u32,
}

impl Pending {
    /// Whether `member` holds the task: it was sent there and not taken back.
    pub(super) fn held_by(&self, member: &str) -> bool {
        !self.waiting && self.member == member
    }

    /// Gives the task to `member`. What a run of the same name counted before is forgotten:
    /// the new run's end counts its own outputs.
    pub(super) fn assign(&mut self, member: &str) {
        self.member = member.into();
        self.waiting = false;
        self.seen.retain(|(m, _)| m != member);
        if matches!(&self.parked, Some((m, _)) if m == member) {
            self.parked = None;
        }
    }

    pub(super) fn seen_from(&self, member: &str) -> u32 {
        self.seen
            .iter()
            .find(|(m, _)| m == member)
            .map_or(0, |(_, n)| *n)
    }
}

pub(super) struct Live {
    pub(super) info: MemberInfo,
    /// The member's run, from its join request.
    pub(super) nonce: u64,
    pub(super) last_seen: Instant,
    /// The last heartbeat's number.
    pub(super) alive_seq: u64,
    pub(super) outstanding: usize,
    pub(super) limit: usize,
}

pub(super) struct Sticky {
    pub(super) key: String,
    /// Which setting this is (the value of `Inner::sticky_set` then).
    pub(super) set: u64,
    pub(super) payload: Vec<u8>,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) closed: bool,
    /// Why the pool failed for good (another parent took it over): it acts no more.
    pub(super) failed: Option<String>,
    /// Why submissions fail now: the broker is out of reach past the broker timeout.
    pub(super) broker_gone: Option<String>,
    /// The pool's streams are being made anew: joins wait.
    pub(super) recovering: bool,
    pub(super) next_id: u64,
    pub(super) members: Vec<Live>,
    pub(super) cursor: usize,
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
}

impl Inner {
    pub(super) fn live(&self, member: &str) -> Option<usize> {
        self.members.iter().position(|m| m.info.name == member)
    }

    /// Records a task for live member `k`.
    pub(super) fn place(&mut self, k: usize, route: Route, deliveries: u32) -> (u64, TaskHandle) {
        let live = &mut self.members[k];
        live.outstanding += 1;
        let member = live.info.name.clone();
        self.record(member, route, deliveries)
    }

    /// Records a task for `member` (live, or joining: then counted when it goes live).
    pub(super) fn record(
        &mut self,
        member: String,
        route: Route,
        deliveries: u32,
    ) -> (u64, TaskHandle) {
        self.next_id += 1;
        let id = self.next_id;
        let status = Arc::new(Mutex::new(Status {
            member: member.clone(),
            deliveries,
        }));
        let (tx, rx) = oneshot::channel();
        self.tasks.insert(
            id,
            Pending {
                member,
                route,
                tx: Some(tx),
                status: status.clone(),
                seen: Vec::new(),
                parked: None,
                dropped: None,
                waiting: false,
                returned: 0,
            },
        );
        (id, TaskHandle { id, status, rx })
    }

    /// Frees the place task `p` took in its member's backlog, if a member holds it.
    pub(super) fn release(&mut self, p: &Pending) {
        if p.waiting {
            return;
        }
        if let Some(k) = self.live(&p.member) {
            self.members[k].outstanding -= 1;
        }
    }

    /// Ends every task under way with the error `error` makes for the member holding it.
    pub(super) fn end_all(&mut self, error: impl Fn(&str) -> TaskError) {
        let ids: Vec<(u64, String)> = self
            .tasks
            .iter()
            .map(|(id, p)| (*id, p.member.clone()))
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
        result: Result<(), TaskError>,
    ) {
        let Some(mut p) = self.tasks.remove(&id) else {
            return;
        };
        self.release(&p);
        {
            let mut status = lock(&p.status);
            status.member = member.into();
            status.deliveries = status.deliveries.max(deliveries);
        }
        let result = match (result, p.dropped.take()) {
            (Ok(()), Some(why)) => Err(TaskError::Failed {
                message: format!("an output of the task could not be delivered: {why}"),
            }),
            (result, _) => result,
        };
        match p.tx.take() {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => {
                if let Err(e) = result {
                    tracing::warn!(member, task = id, "sticky broadcast for a new member: {e}");
                }
            }
        }
    }
}

pub(super) struct Shared<O> {
    pub(super) names: Names,
    pub(super) pool: String,
    pub(super) broker: Broker,
    pub(super) settings: Settings,
    pub(super) worker: &'static str,
    /// This parent's run: distinguishes its messages and message ids from an earlier
    /// parent's of the same pool.
    pub(super) run: u64,
    pub(super) sealer: Sealer,
    /// Messages refused: forged, replayed, or from a member that does not hold the task.
    pub(super) refused: Refusals,
    /// Tasks stored so far: each storing's number makes its message id, the same through
    /// the storing's retries and different for each storing of one task (a task taken back
    /// may go to the same member again, with the same deliveries).
    pub(super) stored: AtomicU64,
    pub(super) inner: Mutex<Inner>,
    /// Notified whenever a task ends, a member joins or leaves, or the pool closes.
    pub(super) changed: Notify,
    pub(super) events: broadcast::Sender<MemberEvent>,
    pub(super) outputs_tx: async_channel::Sender<Delivery<O>>,
    pub(super) outputs_rx: async_channel::Receiver<Delivery<O>>,
    pub(super) acks: mpsc::UnboundedSender<Ack>,
    /// Per member, its current run and how many of that run's outputs the parent
    /// acknowledged.
    pub(super) acked: Mutex<HashMap<String, (u64, u64)>>,
    pub(super) background: Mutex<Vec<AbortHandle>>,
    /// Reports of the pool's streams found gone, for the recovery.
    pub(super) lost: mpsc::UnboundedSender<String>,
}

/// An output the program took (or one it never got): its member and the member's run.
pub(super) type Ack = (String, u64);

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    pub(super) fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        lock(&self.background).push(tokio::spawn(future).abort_handle());
    }

    pub(super) fn abort_background(&self) {
        for task in lock(&self.background).drain(..) {
            task.abort();
        }
    }

    pub(super) fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    pub(super) async fn send_task(
        &self,
        id: u64,
        member: &str,
        prior: u32,
        payload: Vec<u8>,
    ) -> Result<(), PublishFailure> {
        let subject = self.names.task(member);
        let task = TaskMsg {
            run: self.run,
            id,
            prior,
            payload,
        };
        let msg = self
            .sealer
            .pack(&subject, &task)
            .map_err(PublishFailure::Refused)?;
        let storing = self.stored.fetch_add(1, Ordering::Relaxed);
        let msg_id = format!("{:x}-{id}-{storing}", self.run);
        let deadline = Instant::now() + self.settings.broker_timeout;
        let sent = broker::publish(&self.broker.js, &subject, &msg_id, &msg, deadline).await;
        if let Err(PublishFailure::NoStream) = &sent {
            self.streams_lost(format!("stream {} is gone", self.names.tasks_stream()));
        }
        sent
    }

    /// `member`, leaving, handed back tasks `ids` without starting them.
    pub(super) fn handed_back(&self, member: &str, ids: &[u64]) {
        let mut inner = self.lock();
        for id in ids {
            match inner.tasks.get_mut(id) {
                Some(p) if p.held_by(member) => p.returned = p.returned.saturating_add(1),
                _ => tracing::debug!(member, task = id, "a task handed back it does not hold"),
            }
        }
    }

    /// Forgets a task the broker did not take.
    pub(super) fn withdraw(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(p) = inner.tasks.remove(&id) {
            inner.release(&p);
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// The broker is out of reach past the broker timeout: tasks under way end with a broker
    /// error, and submissions fail until it is back.
    pub(super) fn broker_gone(&self, reason: String) {
        let mut inner = self.lock();
        if inner.broker_gone.is_some() {
            return;
        }
        tracing::error!(pool = %self.pool, "the broker is {reason}: tasks under way fail");
        inner.broker_gone = Some(reason.clone());
        inner.end_all(|_| TaskError::Broker {
            reason: reason.clone(),
        });
        drop(inner);
        self.changed.notify_waiters();
    }

    /// The broker is back.
    pub(super) fn broker_back(&self) {
        if self.lock().broker_gone.take().is_some() {
            tracing::info!(pool = %self.pool, "the broker is back: submissions go through again");
        }
    }

    /// The pool can go on no more: refuse new tasks, and end those under way as lost.
    pub(super) fn fail(&self, reason: String) {
        tracing::error!(pool = %self.pool, "the pool failed: {reason}");
        let mut inner = self.lock();
        inner.closed = true;
        inner.failed = Some(reason.clone());
        inner.end_all(|member| TaskError::Lost {
            member: member.into(),
            reason: format!("the pool failed: {reason}"),
        });
        inner.reclaiming.clear();
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Ends task `id` as lost with `member`, after `deliveries` deliveries to members (0: as
    /// many as counted so far).
    pub(super) fn lose(&self, id: u64, member: &str, deliveries: u32, reason: String) {
        let error = TaskError::Lost {
            member: member.into(),
            reason,
        };
        self.lock().finish(id, member, deliveries, Err(error));
        self.changed.notify_waiters();
    }

    /// Tells `member` how many of its outputs were acknowledged, and how far its messages were
    /// received.
    pub(super) async fn grant(&self, member: &str) {
        let Some((nonce, acked)) = lock(&self.acked).get(member).copied() else {
            return;
        };
        let received = match self.lock().sessions.get(member) {
            Some(s) if s.nonce == nonce => s.received,
            _ => return,
        };
        let subject = self.names.credit(member);
        let credit = Credit {
            run: self.run,
            nonce,
            acked,
            received,
        };
        if let Ok(bytes) = self.sealer.pack(&subject, &credit) {
            let _ = self.broker.client.publish(subject, bytes.into()).await;
        }
    }

    /// Tells run `nonce` of `member` what to do.
    pub(super) async fn control(&self, member: &str, nonce: u64, control: Control) {
        let subject = self.names.ctl(member);
        let msg = CtlMsg {
            run: self.run,
            nonce,
            control,
        };
        if let Ok(bytes) = self.sealer.pack(&subject, &msg) {
            if let Err(e) = self.broker.client.publish(subject, bytes.into()).await {
                tracing::warn!(member, "cannot tell the member to stop: {e}");
            }
        }
    }
}
