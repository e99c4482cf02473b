//! What the program holds: task handles, output deliveries, member events.

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
use tokio::sync::{broadcast, mpsc, oneshot};

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
    /// The task's id, which tags its outputs ([`Delivery::task_id`]).
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

/// One output of a member's worker, acknowledged (returning one result credit to its member)
/// when dropped.
pub struct Delivery<O> {
    pub(super) member: String,
    /// The member's run that sent it.
    pub(super) nonce: u64,
    pub(super) task: Option<u64>,
    pub(super) value: Option<O>,
    pub(super) acks: mpsc::UnboundedSender<super::shared::Ack>,
}

impl<O: fmt::Debug> fmt::Debug for Delivery<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("member", &self.member)
            .field("task", &self.task)
            .field("value", &self.value)
            .finish()
    }
}

impl<O> Delivery<O> {
    /// The member that emitted it.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The task that emitted it, or `None` for an unsolicited output.
    pub fn task_id(&self) -> Option<u64> {
        self.task
    }

    /// The output.
    pub fn value(&self) -> &O {
        self.value
            .as_ref()
            .expect("value is taken only on consumption")
    }

    /// Acknowledges it now (dropping does the same).
    pub fn ack(self) {}

    /// Takes the output, acknowledging it.
    pub fn into_value(mut self) -> O {
        self.value.take().expect("value is taken only once")
    }
}

impl<O> std::ops::Deref for Delivery<O> {
    type Target = O;

    fn deref(&self) -> &O {
        self.value()
    }
}

impl<O> Drop for Delivery<O> {
    fn drop(&mut self) {
        let _ = self
            .acks
            .send((std::mem::take(&mut self.member), self.nonce));
    }
}

/// The stream of every member's outputs, in arrival order (also a `futures` `Stream`).
///
/// Clones share the stream: each output goes to one of them. Outputs of tasks sent by
/// [`Pool::call`](super::Pool::call) go to their caller instead.
#[derive(Debug)]
pub struct Outputs<O> {
    pub(super) rx: Pin<Box<async_channel::Receiver<Delivery<O>>>>,
}

impl<O> Clone for Outputs<O> {
    fn clone(&self) -> Self {
        Self {
            rx: Box::pin((*self.rx).clone()),
        }
    }
}

impl<O> futures_util::Stream for Outputs<O> {
    type Item = Delivery<O>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        self.rx.as_mut().poll_next(cx)
    }
}

impl<O> Outputs<O> {
    /// The next output; `None` once the pool stopped and every output was taken.
    pub async fn recv(&self) -> Option<Delivery<O>> {
        self.rx.recv().await.ok()
    }

    /// The next output if one is waiting.
    pub fn try_recv(&self) -> Option<Delivery<O>> {
        self.rx.try_recv().ok()
    }

    /// Outputs received and waiting to be taken: at most the result credit per member.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no output is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}
