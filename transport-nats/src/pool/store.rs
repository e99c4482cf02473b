//! Storing tasks in the order they were placed: submissions, broadcasts and `try_submit`
//! place a task and hand it to a loop of the pool's, which hands each to the client in that
//! order and waits for the broker's answers concurrently. A task the broker does not store
//! leaves the table: a submitter still waiting gets the task back, and one not waiting finds
//! its handle ended with [`TaskError::Broker`].

use super::shared::{lock, Shared};
use crate::broker::{self, PublishFailure};
use looppool_core::TaskError;
use serde::de::DeserializeOwned;
use std::sync::Weak;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// Where a submitter waits for its task to be stored.
pub(super) type Done = oneshot::Sender<Result<(), PublishFailure>>;

/// A placed task to store for its member.
pub(super) struct ToStore {
    id: u64,
    member: String,
    payload: Vec<u8>,
    done: Option<Done>,
}

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    /// Has placed task `id` stored for `member`, after every task placed before it; `done`
    /// hears how that went (the task has left the table if it was not stored).
    pub(super) fn store_task(&self, id: u64, member: String, payload: Vec<u8>, done: Option<Done>) {
        let task = ToStore {
            id,
            member,
            payload,
            done,
        };
        if let Err(mpsc::error::SendError(task)) = self.store.send(task) {
            // The loop ended: the pool is being dropped.
            let gone = PublishFailure::Refused("the pool is being dropped".into());
            self.report_stored(task, Err(gone));
        }
    }

    /// Whether `task` is still to be stored: one that ended meanwhile (the pool failed, or its
    /// streams were made anew) is not, nor one cancelled, which leaves the table now (its
    /// member would never report its end).
    fn still_wanted(&self, task: &ToStore) -> bool {
        let mut inner = self.lock();
        if !inner.tasks.contains_key(&task.id) {
            return false;
        }
        if inner.placement.is_cancelled(task.id) {
            inner.withdraw(task.id);
            drop(inner);
            self.changed.notify_waiters();
            return false;
        }
        true
    }

    /// How storing `task` went. A task not stored leaves the table: with its submitter
    /// waiting, as if never placed (the submitter gets it back); else it ends with a broker
    /// error.
    fn report_stored(&self, task: ToStore, result: Result<(), PublishFailure>) {
        if let Err(e) = &result {
            if let PublishFailure::NoStream = e {
                self.streams_lost(format!("stream {} is gone", self.names.tasks_stream()));
            }
            if task.done.is_some() {
                self.withdraw(task.id);
                lock(&self.calls).remove(&task.id);
            } else {
                let reason = format!("the broker did not store the task: {e}");
                self.lock()
                    .finish(task.id, &task.member, 0, Err(TaskError::Broker { reason }));
                self.changed.notify_waiters();
            }
        }
        if let Some(done) = task.done {
            let _ = done.send(result);
        }
    }
}

/// Stores each task as it comes, in order: each is handed to the client before the next, and
/// the broker's answer waited for on a task of its own (the client allows only so many
/// answers outstanding, and this loop must not wait for one to hand over the next). Those
/// tasks end with the loop, when the pool is dropped or fails.
pub(super) async fn store_in_order<O: DeserializeOwned + Send + 'static>(
    shared: Weak<Shared<O>>,
    mut tasks: mpsc::UnboundedReceiver<ToStore>,
) {
    let mut answers = JoinSet::new();
    loop {
        let mut task = tokio::select! {
            next = tasks.recv() => match next {
                Some(task) => task,
                None => break,
            },
            Some(_) = answers.join_next(), if !answers.is_empty() => continue,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if !shared.still_wanted(&task) {
            if let Some(done) = task.done.take() {
                let _ = done.send(Ok(()));
            }
            continue;
        }
        let payload = std::mem::take(&mut task.payload);
        let (subject, msg_id, bytes) = match shared.task_message(task.id, &task.member, 0, payload)
        {
            Ok(m) => m,
            Err(e) => {
                shared.report_stored(task, Err(e));
                continue;
            }
        };
        let deadline = Instant::now() + shared.settings.broker_timeout;
        let stored =
            broker::publish_in_order(&shared.broker.js, &subject, &msg_id, &bytes, deadline).await;
        answers.spawn(async move {
            let result = stored.await;
            shared.report_stored(task, result);
        });
    }
    while answers.join_next().await.is_some() {}
}
