//! Placing tasks: encoding, pending entries and handles, deadlines, request-reply calls, and
//! cancellation when a call's future is dropped.

use super::ending::{end_slot, EndReceiver};
use super::handle::{CancelSink, Delivery, TaskHandle};
use super::shared::{Payload, Pending, Replies};
use super::Pool;
use crate::error::{CallError, SubmitError};
use crate::state::{Route, TaskId};
use crate::worker::Worker;
use futures_channel::{mpsc, oneshot};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The receiving sides of a pending entry: its end, its attempts, and its outputs' receiver.
type Parts<O> = (EndReceiver, Receiving<O>);

/// Where a task's outputs should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// The pool's output stream.
    Outputs,
    /// The first to a call.
    First,
    /// All to a stream.
    Stream,
}

/// The receiving side for a task's outputs.
pub(super) enum Receiving<O> {
    Outputs,
    First(oneshot::Receiver<Delivery<O>>),
    Stream(mpsc::UnboundedReceiver<Delivery<O>>),
}

impl<W: Worker> Pool<W> {
    /// Sends `task` like [`submit`](Self::submit) and returns its first output: the
    /// request-reply case.
    ///
    /// The task's outputs go to this call, not to [`outputs`](Self::outputs); the first is
    /// returned (and acknowledged), any later ones are acknowledged and discarded. A task that
    /// completes without an output gives [`CallError::NoOutput`]. Every failure is one variant of
    /// the flat [`CallError`], the worker's own error in [`CallError::Failed`]. Dropping the future before it
    /// resolves (a client that went away, a `timeout` around it) cancels the task in its worker,
    /// as [`TaskHandle::abort`] does.
    pub async fn call(&self, task: W::Task) -> Result<W::Output, CallError<W::Error>> {
        self.call_route(Route::Any, task, true, None).await
    }

    /// Like [`call`](Self::call), on worker `worker`.
    pub async fn call_to(
        &self,
        worker: usize,
        task: W::Task,
    ) -> Result<W::Output, CallError<W::Error>> {
        self.call_route(Route::Worker(worker), task, true, None)
            .await
    }

    /// Sends `task` like [`call`](Self::call) and returns its first output, but cancels it in
    /// its worker and fails with [`CallError::TimedOut`] if it has not ended `timeout` after it
    /// was accepted (the wait for room, if any, comes first and is not counted).
    pub async fn call_timeout(
        &self,
        task: W::Task,
        timeout: Duration,
    ) -> Result<W::Output, CallError<W::Error>> {
        self.call_route(Route::Any, task, true, Some(timeout)).await
    }

    /// Like [`call`](Self::call), but fails at once with [`CallError::Full`] instead of waiting
    /// when no worker has room.
    pub async fn try_call(&self, task: W::Task) -> Result<W::Output, CallError<W::Error>> {
        self.call_route(Route::Any, task, false, None).await
    }

    /// Like [`submit`](Self::submit), and the task is cancelled in its worker, its handle
    /// resolving to [`TaskError::TimedOut`](crate::TaskError::TimedOut), if it has not ended `timeout` after it was
    /// accepted (through retries too). The pool-wide [`Builder::task_timeout`](crate::Builder)
    /// applies as well.
    pub async fn submit_timeout(
        &self,
        task: W::Task,
        timeout: Duration,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        Ok(self
            .place(Route::Any, task, Want::Outputs, true, Some(timeout))
            .await?
            .0)
    }

    pub(super) async fn call_route(
        &self,
        route: Route,
        task: W::Task,
        wait: bool,
        timeout: Option<Duration>,
    ) -> Result<W::Output, CallError<W::Error>> {
        let (handle, reply) = self
            .place(route, task, Want::First, wait, timeout)
            .await
            .map_err(CallError::refused)?;
        let id = handle.id();
        let Receiving::First(mut reply) = reply else {
            unreachable!("a call has a reply channel")
        };
        // Dropping this future before the task ends cancels the task.
        let mut guard = CancelOnDrop {
            sink: self.canceller(),
            id: Some(id),
        };
        let ended = handle.await;
        guard.id = None;
        ended.map_err(|e| CallError::ended(id, e))?;
        // The worker writes a task's outputs before its end, and the parent reads them in order,
        // so a reply, if any, has arrived by now.
        match reply.try_recv() {
            Ok(Some(delivery)) => Ok(delivery.into_value()),
            _ => Err(CallError::NoOutput { task: id }),
        }
    }

    /// Places `task` on `route` now, or hands it back in [`SubmitError::Full`]: the `try_*`
    /// submissions.
    pub(super) fn try_place(
        &self,
        route: Route,
        task: W::Task,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        futures_util::FutureExt::now_or_never(self.place(route, task, Want::Outputs, false, None))
            .expect("a non-waiting placement never waits")
            .map(|(h, _)| h)
    }

    /// A pending entry and the receiving parts of its handle.
    pub(super) fn pending(
        &self,
        want: Want,
        timeout: Option<Duration>,
    ) -> (Pending<W::Output>, Parts<W::Output>) {
        let (done, end) = end_slot();
        let (replies, receiving) = match want {
            Want::Outputs => (Replies::Outputs, Receiving::Outputs),
            Want::First => {
                let (tx, rx) = oneshot::channel();
                (Replies::First(Some(tx)), Receiving::First(rx))
            }
            Want::Stream => {
                let (tx, rx) = mpsc::unbounded();
                (Replies::Stream(tx), Receiving::Stream(rx))
            }
        };
        let pending = Pending {
            done,
            replies,
            since: self.shared.runtime.now(),
            timeout,
        };
        (pending, (end, receiving))
    }

    /// Logs a placed task in the caller's context (a request's span): the task id, which the
    /// worker's forwarded events carry in their `task` field, joins the two sides' logs.
    pub(super) fn log_placed(&self, worker: usize, id: TaskId, what: &str) {
        tracing::debug!(
            target: "looppool::call",
            pool = %self.shared.settings.name,
            worker,
            task = id,
            "{what}"
        );
    }

    /// What a handle cancels its task through.
    pub(super) fn canceller(&self) -> Weak<dyn CancelSink> {
        let sink: Weak<super::shared::Shared<W::Output>> = Arc::downgrade(&self.shared);
        sink
    }

    pub(super) fn encode(&self, task: &W::Task) -> Result<Payload, String> {
        // The frame adds a header of at most 11 bytes (variant and a varint id).
        encode_shared(task, self.shared.settings.max_frame - 11)
    }

    pub(super) async fn place(
        &self,
        route: Route,
        task: W::Task,
        want: Want,
        wait: bool,
        timeout: Option<Duration>,
    ) -> Result<(TaskHandle<W::Error>, Receiving<W::Output>), SubmitError<W::Task>> {
        let payload = match self.encode(&task) {
            Ok(p) => p,
            Err(e) => return Err(SubmitError::Encode(task, e)),
        };
        let (pending, (end, receiving)) = self.pending(want, timeout);
        match self
            .shared
            .place(route, &payload, pending, wait, timeout)
            .await
        {
            Ok((worker, id)) => {
                self.log_placed(worker, id, "task placed");
                Ok((
                    TaskHandle::new(id, worker, end, self.canceller()),
                    receiving,
                ))
            }
            Err((refusal, _)) => Err(SubmitError::from_refusal(task, refusal)),
        }
    }
}

/// Cancels a call's task if the call's future is dropped before the task ended.
pub(super) struct CancelOnDrop {
    pub(super) sink: Weak<dyn CancelSink>,
    /// The task, until it ended.
    pub(super) id: Option<TaskId>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let (Some(id), Some(sink)) = (self.id, self.sink.upgrade()) {
            sink.cancel(id);
        }
    }
}

/// Encodes `task` straight into the buffer the state and the writer share: one allocation and
/// no copy, where encoding into a vector and sharing that took two allocations. A task over
/// `limit` bytes is refused before anything is allocated for it.
fn encode_shared<T: serde::Serialize>(task: &T, limit: usize) -> Result<Payload, String> {
    let failed = |e: postcard::Error| format!("cannot encode the task: {e}");
    let too_big = |size: usize| {
        format!("the encoded task is {size} bytes, over the frame limit of {limit} bytes")
    };
    let size = postcard::serialize_with_flavor(task, postcard::ser_flavors::Size::default())
        .map_err(failed)?;
    if size > limit {
        return Err(too_big(size));
    }
    // One allocation, written in place (a `TrustedLen` iterator collects without a copy).
    let mut shared: Payload = std::iter::repeat_n(0, size).collect();
    let bytes = Arc::get_mut(&mut shared).expect("a new buffer is not shared yet");
    match postcard::to_slice(task, bytes) {
        Ok(written) if written.len() == size => Ok(shared),
        // A `Serialize` that does not write what it measured: encode it the plain way.
        _ => {
            let bytes = postcard::to_stdvec(task).map_err(failed)?;
            if bytes.len() > limit {
                return Err(too_big(bytes.len()));
            }
            Ok(Payload::from(bytes))
        }
    }
}
