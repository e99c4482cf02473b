//! The pool's bookkeeping, and the parent's side of joining, leaving and taking tasks back.

use super::handle::MemberEvent;
use super::inner::Inner;
use super::Settings;
use crate::broker::{self, Broker, PublishFailure};
use crate::seal::{Refusals, Sealer};
use crate::wire::{Control, Credit, CtlMsg, Names, TaskMsg};
use looppool_core::TaskError;
use looppool_core::{Delivery, OutputSender};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::AbortHandle;

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
    pub(super) outputs_tx: OutputSender<O>,
    pub(super) acks: mpsc::UnboundedSender<Ack>,
    /// Per member, its current run and how many of that run's outputs the parent
    /// acknowledged.
    pub(super) acked: Mutex<HashMap<String, (u64, u64)>>,
    pub(super) background: Mutex<Vec<AbortHandle>>,
    /// Tasks sent by a [`call`](super::Pool::call): where their first output goes (`None`
    /// once it went, or once the call was dropped: later outputs are dropped).
    pub(super) calls: Mutex<Calls<O>>,
    /// Reports of the pool's streams found gone, for the recovery.
    pub(super) lost: mpsc::UnboundedSender<String>,
    /// Cancelled tasks their members are to drop.
    pub(super) cancels: mpsc::UnboundedSender<super::cancel::ToDrop>,
    /// Tasks placed, to store in the order they were placed.
    pub(super) store: mpsc::UnboundedSender<super::store::ToStore>,
}

/// Per task sent by a call, where its first output goes.
pub(super) type Calls<O> = HashMap<u64, Option<oneshot::Sender<Delivery<O>>>>;

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
        let (subject, msg_id, msg) = self.task_message(id, member, prior, payload)?;
        let deadline = Instant::now() + self.settings.broker_timeout;
        let sent = broker::publish(&self.broker.js, &subject, &msg_id, &msg, deadline).await;
        if let Err(PublishFailure::NoStream) = &sent {
            self.streams_lost(format!("stream {} is gone", self.names.tasks_stream()));
        }
        sent
    }

    /// Task `id` as stored for `member`: its subject, message id and sealed message.
    pub(super) fn task_message(
        &self,
        id: u64,
        member: &str,
        prior: u32,
        payload: Vec<u8>,
    ) -> Result<(String, String, Vec<u8>), PublishFailure> {
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
        Ok((subject, msg_id, msg))
    }

    /// Sends task `id`'s first output to `reply`, and none to the output stream. Forgets the
    /// entries of calls whose tasks ended.
    pub(super) fn expect_reply(&self, id: u64, reply: oneshot::Sender<Delivery<O>>) {
        let inner = self.lock();
        let mut calls = lock(&self.calls);
        calls.retain(|task, _| inner.tasks.contains_key(task));
        calls.insert(id, Some(reply));
    }

    /// `member`, leaving, handed back tasks `ids` without starting them.
    pub(super) fn handed_back(&self, member: &str, ids: &[u64]) {
        let mut inner = self.lock();
        for id in ids {
            let held = inner.holds(*id, member);
            match inner.tasks.get_mut(id) {
                Some(p) if held => p.returned = p.returned.saturating_add(1),
                _ => tracing::debug!(member, task = id, "a task handed back it does not hold"),
            }
        }
    }

    /// Forgets a task the broker did not take.
    pub(super) fn withdraw(&self, id: u64) {
        self.lock().withdraw(id);
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
        inner.placement.close();
        inner.failed = Some(reason.clone());
        inner.end_all(|member| TaskError::MemberLost {
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
        let error = TaskError::MemberLost {
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
                tracing::warn!(member, "cannot reach the member: {e}");
            }
        }
    }
}
