//! All outputs of one task as a [`Stream`](futures_util::Stream) that ends with the task.

use super::call::{CancelOnDrop, Receiving, Want};
use super::handle::{Delivery, TaskHandle};
use super::Pool;
use crate::error::{CallError, Failure};
use crate::state::{Route, TaskId};
use crate::worker::Worker;
use futures_channel::mpsc;
use futures_util::Stream;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

impl<W: Worker> Pool<W> {
    /// Sends `task` like [`call`](Self::call) and returns all its outputs, in the order the
    /// worker emitted them, as a stream that ends when the task ends: after the last output if
    /// it completed, or with one `Err` naming how it failed.
    ///
    /// Waits for room like [`submit`](Self::submit). The outputs go to the stream, not to
    /// [`outputs`](Self::outputs), and each is acknowledged as the stream yields it, so a slow
    /// reader holds the worker back by its result credit, as the output stream does. Dropping
    /// the stream before it ended cancels the task in its worker, as a dropped `call` does.
    ///
    /// A task sent again (its worker died and [`retries`](crate::Builder::retries) allow it, or
    /// its worker was killed for ignoring another task's cancellation) keeps its stream: the
    /// outputs of its earlier attempt, already yielded, are followed by those of the next one,
    /// as on [`outputs`](Self::outputs). A stream that must not see a partial attempt belongs
    /// to a pool without retries, whose workers do not ignore cancellations.
    pub async fn call_stream(
        &self,
        task: W::Task,
    ) -> Result<CallStream<W::Output, W::Error>, CallError<W::Error>> {
        let (handle, receiving) = self
            .place(Route::Any, task, Want::Stream, true, None)
            .await
            .map_err(CallError::refused)?;
        let Receiving::Stream(outputs) = receiving else {
            unreachable!("a streamed call has a stream")
        };
        let guard = CancelOnDrop {
            sink: self.canceller(),
            id: Some(handle.id()),
        };
        Ok(CallStream {
            handle,
            outputs,
            guard,
        })
    }
}

/// The outputs of one task, from [`Pool::call_stream`]: `Ok` for each output, then, if the
/// task failed, one `Err`; then the end. Dropping it before its end cancels the task.
#[must_use = "streams do nothing unless polled; dropping this one cancels its task"]
pub struct CallStream<O, E = Failure> {
    handle: TaskHandle<E>,
    outputs: mpsc::UnboundedReceiver<Delivery<O>>,
    /// Holds the task's id until the task ended.
    guard: CancelOnDrop,
}

impl<O, E> CallStream<O, E> {
    /// The task's id: the `task` field of the worker's forwarded log events.
    pub fn id(&self) -> TaskId {
        self.handle.id()
    }

    /// The worker the task was sent to first.
    pub fn worker(&self) -> usize {
        self.handle.worker()
    }

    /// Cancels the task (see [`TaskHandle::abort`]); the stream then ends with
    /// [`CallError::Cancelled`] after the outputs that arrived before.
    pub fn abort(&self) -> bool {
        self.handle.abort()
    }
}

impl<O, E> fmt::Debug for CallStream<O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallStream")
            .field("id", &self.handle.id())
            .field("worker", &self.handle.worker())
            .field("ended", &self.guard.id.is_none())
            .finish()
    }
}

impl<O, E: DeserializeOwned> Stream for CallStream<O, E> {
    type Item = Result<O, CallError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(id) = this.guard.id else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut this.outputs).poll_next(cx) {
            Poll::Ready(Some(delivery)) => return Poll::Ready(Some(Ok(delivery.into_value()))),
            Poll::Pending => return Poll::Pending,
            // The task's pending entry is gone: it ended, and every output it emitted before
            // its end was read from its link before the end, so all are behind us.
            Poll::Ready(None) => {}
        }
        let ended = match Pin::new(&mut this.handle).poll(cx) {
            Poll::Ready(ended) => ended,
            Poll::Pending => return Poll::Pending,
        };
        this.guard.id = None;
        Poll::Ready(ended.err().map(|e| Err(CallError::ended(id, e))))
    }
}
