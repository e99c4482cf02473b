//! Cancelling a task: its handle ends at once, as the core's placement decides, and the member
//! holding it is told to drop it.

use super::shared::Shared;
use super::Pool;
use crate::error::RawTaskError;
use crate::wire::Control;
use looppool_core::state::members::Cancelled;
use looppool_core::{CancelSink, SubmitError, TaskError, TaskHandle, TaskId, Worker};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// A task the member holding it is to drop.
pub(super) type ToDrop = (String, u64);

impl<O: DeserializeOwned + Send + 'static> CancelSink for Shared<O> {
    fn cancel(&self, id: TaskId) -> bool {
        self.cancel_as(id, TaskError::Cancelled)
    }
}

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    /// Cancels task `id`, which ends now with `error`; whether it had not ended.
    pub(super) fn cancel_as(&self, id: TaskId, error: RawTaskError) -> bool {
        let mut inner = self.lock();
        // Its member ended it, and its end waits only for outputs on their way.
        if inner.tasks.get(&id).is_some_and(|p| p.parked.is_some()) {
            return false;
        }
        let holder = inner.placement.holder(id).cloned().unwrap_or_default();
        match inner.placement.cancel(id) {
            Cancelled::NotHeld => return false,
            // It waited for a member: nobody has it.
            Cancelled::Ended => inner.finish(id, &holder, 0, Err(error)),
            Cancelled::Tell(member) => {
                // Ends now; its entry stays until the member's end, so that what the member
                // still sends for it is taken quietly, and its place in the backlog kept.
                if let Some(tx) = inner.tasks.get_mut(&id).and_then(|p| p.tx.take()) {
                    let _ = tx.send(Err(error));
                }
                let _ = self.cancels.send((member, id));
            }
        }
        drop(inner);
        self.changed.notify_waiters();
        true
    }

    /// Cancels task `id` with [`TaskError::TimedOut`] if it has not ended `after` from now.
    pub(super) fn expire(self: &Arc<Self>, id: TaskId, after: Duration) {
        let shared = Arc::downgrade(self);
        let timer = tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(shared) = shared.upgrade() {
                shared.cancel_as(id, TaskError::TimedOut { after });
            }
        });
        // Stopped when the task ends, not left to sleep out its time.
        match self.lock().tasks.get_mut(&id) {
            Some(p) => p.timer = Some(timer.abort_handle()),
            None => timer.abort(),
        }
    }
}

impl<W: Worker> Pool<W> {
    /// Like [`submit`](Self::submit), and the task is cancelled, its handle resolving to
    /// [`TaskError::TimedOut`], if it has not ended `timeout` after it was stored (through
    /// its moves to other members too). Its member is told to drop it, as
    /// [`TaskHandle::abort`](looppool_core::TaskHandle::abort) does.
    pub async fn submit_timeout(
        &self,
        task: W::Task,
        timeout: Duration,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        let handle = self.submit(task).await?;
        self.shared.expire(handle.id(), timeout);
        Ok(handle)
    }
}

/// Tells members which tasks to drop, several to a message when several are cancelled at once.
/// A message lost on the way (a broker restarting) lets the task run to its end, whose outputs
/// are then dropped.
pub(super) async fn send_cancels<O: DeserializeOwned + Send + 'static>(
    shared: Weak<Shared<O>>,
    mut cancels: mpsc::UnboundedReceiver<ToDrop>,
) {
    let mut batch = Vec::new();
    while cancels.recv_many(&mut batch, 256).await > 0 {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut by_member: HashMap<String, Vec<u64>> = HashMap::new();
        for (member, id) in batch.drain(..) {
            by_member.entry(member).or_default().push(id);
        }
        for (member, ids) in by_member {
            let nonce = {
                let inner = shared.lock();
                inner.live(&member).map(|k| inner.members[k].nonce)
            };
            // A member gone has its tasks taken back, and those cancelled dropped.
            if let Some(nonce) = nonce {
                shared
                    .control(&member, nonce, Control::Cancel { ids })
                    .await;
            }
        }
    }
}

/// Cancels a call's task if the call's future is dropped before the task ended.
pub(super) struct CancelOnDrop<O: DeserializeOwned + Send + 'static> {
    pub(super) shared: Arc<Shared<O>>,
    /// The task, until it ended.
    pub(super) id: Option<u64>,
}

impl<O: DeserializeOwned + Send + 'static> Drop for CancelOnDrop<O> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.shared.cancel(id);
        }
    }
}
