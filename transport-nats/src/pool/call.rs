//! Request-reply calls: a task whose first output is the answer, as in a local pool.

use super::cancel::CancelOnDrop;
use super::{Pool, Target};
use crate::pool::shared::lock;
use looppool_core::{CallError, SubmitError, Worker};
use std::time::Duration;
use tokio::sync::oneshot;

impl<W: Worker> Pool<W> {
    /// Sends `task` like [`submit`](Self::submit) and returns its first output: the
    /// request-reply case, with the core's flat [`CallError`].
    ///
    /// The task's outputs go to this call, not to [`outputs`](Self::outputs): the first is
    /// returned (and acknowledged), later ones are acknowledged and dropped, those of a second
    /// run (after its member died) included. A task that completes without an output gives
    /// [`CallError::NoOutput`]. Dropping the future before it resolves (a client that went
    /// away, a `timeout` around it) cancels the task, as
    /// [`TaskHandle::abort`](looppool_core::TaskHandle::abort) does.
    pub async fn call(&self, task: W::Task) -> Result<W::Output, CallError<W::Error>> {
        self.call_inner(Target::Any, task, true, None).await
    }

    /// Like [`call`](Self::call), but cancels the task and fails with
    /// [`CallError::TimedOut`] if it has not ended `timeout` after it was stored (the wait
    /// for room in a member's backlog, if any, comes first and is not counted).
    pub async fn call_timeout(
        &self,
        task: W::Task,
        timeout: Duration,
    ) -> Result<W::Output, CallError<W::Error>> {
        self.call_inner(Target::Any, task, true, Some(timeout))
            .await
    }

    /// Like [`call`](Self::call), on member `member` only.
    pub async fn call_to(
        &self,
        member: &str,
        task: W::Task,
    ) -> Result<W::Output, CallError<W::Error>> {
        self.call_inner(Target::Member(member), task, true, None)
            .await
    }

    /// Like [`call`](Self::call), but fails at once with [`CallError::Full`] instead of waiting
    /// while the member in turn holds its backlog.
    pub async fn try_call(&self, task: W::Task) -> Result<W::Output, CallError<W::Error>> {
        self.call_inner(Target::Any, task, false, None).await
    }

    async fn call_inner(
        &self,
        target: Target<'_>,
        task: W::Task,
        wait: bool,
        timeout: Option<Duration>,
    ) -> Result<W::Output, CallError<W::Error>> {
        let payload = match self.encode(&task) {
            Ok(p) => p,
            Err(e) => return Err(CallError::refused(SubmitError::Encode(task, e))),
        };
        let (id, member, handle) = self
            .place_when_room(target, wait, true)
            .await
            .map_err(|why| CallError::refused(why.with(task)))?;
        // Before the task is stored: no output of it can have arrived.
        let (tx, mut reply) = oneshot::channel();
        self.shared.expect_reply(id, tx);
        let forget = Forget {
            calls: &self.shared.calls,
            id,
        };
        // Dropping this future before the task ends cancels the task, stored yet or not.
        let mut cancel = CancelOnDrop {
            shared: self.shared.clone(),
            id: Some(id),
        };
        if let Err(e) = self.stored(id, member, payload).await {
            cancel.id = None;
            return Err(CallError::Broker {
                task: None,
                reason: e,
            });
        }
        if let Some(after) = timeout {
            self.shared.expire(id, after);
        }
        let ended = handle.await;
        cancel.id = None;
        drop(forget);
        ended.map_err(|e| CallError::ended(id, e))?;
        // A member sends a task's outputs before its end, and the parent takes the end only
        // once it has counted them: the reply, if any, is here.
        match reply.try_recv() {
            Ok(delivery) => Ok(delivery.into_value()),
            Err(_) => Err(CallError::NoOutput { task: id }),
        }
    }
}

/// Forgets a call's reply channel when the call ends or is dropped: its task's later outputs
/// are dropped, not sent to the output stream.
struct Forget<'a, O> {
    calls: &'a std::sync::Mutex<super::shared::Calls<O>>,
    id: u64,
}

impl<O> Drop for Forget<'_, O> {
    fn drop(&mut self) {
        if let Some(slot) = lock(self.calls).get_mut(&self.id) {
            *slot = None;
        }
    }
}
