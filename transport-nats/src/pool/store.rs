//! Storing tasks behind the submitter's back: [`Pool::try_submit`](super::Pool::try_submit)
//! places a task and returns its handle at once; a loop of the pool's stores the tasks in the
//! order they were placed, several under way at a time, and ends a task the broker did not
//! take with [`TaskError::Broker`].

use super::shared::Shared;
use crate::broker::{self, PublishFailure};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use looppool_core::TaskError;
use serde::de::DeserializeOwned;
use std::sync::Weak;
use std::time::Instant;
use tokio::sync::mpsc;

/// A placed task to store for its member.
pub(super) struct ToStore {
    pub(super) id: u64,
    pub(super) member: String,
    pub(super) payload: Vec<u8>,
}

/// Stores each task as it comes, in order, and waits for the broker's answers meanwhile.
pub(super) async fn store_in_order<O: DeserializeOwned + Send + 'static>(
    shared: Weak<Shared<O>>,
    mut tasks: mpsc::UnboundedReceiver<ToStore>,
) {
    let mut storing = FuturesUnordered::new();
    loop {
        tokio::select! {
            next = tasks.recv() => {
                let Some(task) = next else { break };
                let Some(shared) = shared.upgrade() else { return };
                let (subject, msg_id, bytes) = match shared.task_message(task.id, &task.member, 0, task.payload) {
                    Ok(m) => m,
                    Err(e) => {
                        shared.not_stored(task.id, &task.member, &e);
                        continue;
                    }
                };
                let deadline = Instant::now() + shared.settings.broker_timeout;
                let stored =
                    broker::publish_in_order(&shared.broker.js, &subject, &msg_id, &bytes, deadline)
                        .await;
                storing.push(async move {
                    if let Err(e) = stored.await {
                        shared.not_stored(task.id, &task.member, &e);
                    }
                });
            }
            Some(()) = storing.next(), if !storing.is_empty() => {}
        }
    }
    while storing.next().await.is_some() {}
}

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    /// The broker did not store task `id` for `member`: it ends with a broker error.
    fn not_stored(&self, id: u64, member: &str, e: &PublishFailure) {
        if let PublishFailure::NoStream = e {
            self.streams_lost(format!("stream {} is gone", self.names.tasks_stream()));
        }
        let reason = format!("the broker did not store the task: {e}");
        self.lock()
            .finish(id, member, 0, Err(TaskError::Broker { reason }));
        self.changed.notify_waiters();
    }
}
