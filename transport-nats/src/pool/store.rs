//! Storing tasks in the order they were placed: submissions, broadcasts and `try_submit`
//! place a task and hand it to a loop of the pool's, which hands each to the client in that
//! order and waits for the broker's answers concurrently. A task the broker does not store is
//! withdrawn by a submitter still waiting for it, or else ends with [`TaskError::Broker`].

use super::shared::Shared;
use crate::broker::{self, PublishFailure};
use looppool_core::TaskError;
use serde::de::DeserializeOwned;
use std::sync::{Arc, Weak};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

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
    /// hears how that went.
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

    /// How storing `task` went: told to its submitter, or, with none waiting, a task not
    /// stored ends with a broker error.
    fn report_stored(&self, task: ToStore, result: Result<(), PublishFailure>) {
        if let Err(PublishFailure::NoStream) = &result {
            self.streams_lost(format!("stream {} is gone", self.names.tasks_stream()));
        }
        let result = match task.done {
            Some(done) => match done.send(result) {
                Ok(()) => return,
                Err(result) => result,
            },
            None => result,
        };
        if let Err(e) = result {
            let reason = format!("the broker did not store the task: {e}");
            self.lock()
                .finish(task.id, &task.member, 0, Err(TaskError::Broker { reason }));
            self.changed.notify_waiters();
        }
    }
}

/// Stores each task as it comes, in order: each is handed to the client before the next, and
/// the broker's answer waited for on a task of its own (the client allows only so many
/// answers outstanding, and this loop must not wait for one to hand over the next).
pub(super) async fn store_in_order<O: DeserializeOwned + Send + 'static>(
    shared: Weak<Shared<O>>,
    mut tasks: mpsc::UnboundedReceiver<ToStore>,
) {
    while let Some(mut task) = tasks.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
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
        let shared: Arc<Shared<O>> = shared;
        tokio::spawn(async move {
            let result = stored.await;
            shared.report_stored(task, result);
        });
    }
}
