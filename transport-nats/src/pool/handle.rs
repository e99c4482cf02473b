//! What the program holds of a NATS pool's own: task handles and member events (deliveries
//! and the output stream are the core's).

use super::shared::lock;
use crate::error::RawTaskError;
use looppool_core::{Failure, TaskError};
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use tokio::sync::{broadcast, oneshot};

/// What a member told the parent when it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberInfo {
    /// The member's name, unique in the pool.
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// Unfinished tasks it holds at most: its consumer's `max_ack_pending`.
    pub capacity: usize,
    /// Worker processes (or threads) it runs.
    pub workers: usize,
}

/// A member joined or left.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberEvent {
    /// A member joined; tasks may now be routed to it.
    Joined(MemberInfo),
    /// A member left (it said so, or went silent past the member timeout); no task is routed
    /// to it any more, and those it held go to other members.
    Left {
        /// Its name.
        member: String,
        /// Why.
        reason: String,
    },
}

/// The stream of [`MemberEvent`]s from the moment it was taken.
#[derive(Debug)]
pub struct MemberEvents {
    pub(super) rx: broadcast::Receiver<MemberEvent>,
}

impl MemberEvents {
    /// The next event; `None` once the pool is dropped. Events missed by a receiver that fell
    /// more than 1024 behind are skipped.
    pub async fn recv(&mut self) -> Option<MemberEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// How a pool stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stopped {
    /// Members that left when told to.
    pub left: Vec<String>,
    /// Members that did not leave within the stop timeout.
    pub unresponsive: Vec<String>,
}

#[derive(Debug)]
pub(super) struct Status {
    pub(super) member: String,
    pub(super) deliveries: u32,
}

/// Resolves, exactly once, to how one submitted task ended: the core's
/// [`TaskError`], with the worker's own error type `E` in [`TaskError::Failed`].
///
/// A task whose member dies is redelivered to another member, so it may run more than once;
/// its handle still resolves once. Dropping the handle does not cancel the task.
#[must_use = "a task handle tells how the task ended; drop it explicitly to ignore that"]
pub struct TaskHandle<E = Failure> {
    pub(super) id: u64,
    pub(super) status: Arc<Mutex<Status>>,
    pub(super) rx: oneshot::Receiver<Result<(), RawTaskError>>,
    pub(super) error: PhantomData<fn() -> E>,
}

impl<E> fmt::Debug for TaskHandle<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.id)
            .field("status", &self.status)
            .finish()
    }
}

impl<E> TaskHandle<E> {
    /// The task's id, which tags its outputs ([`Delivery::task_id`](looppool_core::Delivery::task_id)).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The member that ran the task (once it ended), or the one it was sent to.
    pub fn member(&self) -> String {
        lock(&self.status).member.clone()
    }

    /// How many times JetStream delivered the task to a member: 1, plus one per redelivery
    /// after a member died holding it. Read it after awaiting the handle by reference
    /// (`(&mut handle).await`).
    pub fn deliveries(&self) -> u32 {
        lock(&self.status).deliveries
    }
}

impl<E: DeserializeOwned> Future for TaskHandle<E> {
    type Output = Result<(), TaskError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(TaskError::MemberLost {
                    member: lock(&self.status).member.clone(),
                    reason: "the pool was dropped".into(),
                })
            })
            // The worker's error is decoded here, by its receiver.
            .map_err(RawTaskError::decode)
        })
    }
}
