//! What the parent does with each frame a worker sends: outputs, task ends, goodbyes,
//! statistics and log events; and the acknowledgements that return result credit.

use super::handle::{AckSink, Acker, Delivery};
use super::shared::{Replies, Shared};
use crate::error::{RawTaskError, TaskError};
use crate::protocol::{split_body, ToParent, WireOutcome};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the frames of one read share: when they arrived, and the wake-ups they owe.
#[derive(Debug)]
pub(crate) struct Batch {
    /// When the read that brought them returned.
    pub(crate) now: Instant,
    /// A task ended: submitters waiting for room are woken once the batch is handled.
    pub(crate) room_freed: bool,
    /// Something became due to the worker (its credit, once its outputs left it short): its
    /// writer is woken once the batch is handled.
    pub(crate) transmit_due: bool,
}

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    /// Handles one frame from worker `worker`. An error ends the link.
    pub(crate) fn handle_frame(
        self: &Arc<Self>,
        worker: usize,
        body: &[u8],
        batch: &mut Batch,
    ) -> Result<(), String> {
        let (header, payload) =
            split_body::<ToParent<'_>>(body).map_err(|e| format!("malformed frame: {e}"))?;
        match header {
            ToParent::Output { task } => {
                // Checked before its payload is decoded: an output a worker claims for a task
                // it does not hold ends its link, and nobody sees the payload.
                let reply = {
                    let mut inner = self.lock();
                    let waiting = inner.state.has_transmit(worker);
                    inner
                        .state
                        .handle_output(worker, task)
                        .map_err(|v| v.to_string())?;
                    // Credits the consumer gave back may be due now that the worker is short
                    // (what was waiting already woke the writer).
                    batch.transmit_due |= !waiting && inner.state.has_transmit(worker);
                    if task.is_some_and(|t| inner.state.is_cancelling(worker, t)) {
                        // Its task was cancelled: nobody wants it. Its credit goes back at once.
                        drop(inner);
                        self.ack(worker);
                        return Ok(());
                    }
                    match task.and_then(|t| inner.pending.get_mut(&t)) {
                        Some(p) => match &mut p.replies {
                            Replies::Outputs => Reply::Outputs,
                            Replies::First(first) => Reply::First(first.take()),
                            Replies::Stream(tx) => Reply::Stream(tx.clone()),
                        },
                        None => Reply::Outputs,
                    }
                };
                let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    postcard::from_bytes::<O>(payload)
                }));
                let value = match decoded {
                    Ok(Ok(value)) => value,
                    failed => {
                        // Nobody will acknowledge it: its credit goes back to the number.
                        self.ack(worker);
                        return Err(match failed {
                            Ok(Err(e)) => format!("malformed output payload: {e}"),
                            Err(panic) => format!(
                                "decoding an output of worker {worker} panicked: {}",
                                panic_text(&*panic)
                            ),
                            Ok(Ok(_)) => unreachable!("handled above"),
                        });
                    }
                };
                let sink: std::sync::Weak<Self> = Arc::downgrade(self);
                let acker = Acker::Worker { sink, worker };
                let delivery = Delivery::new(value, worker, task, acker);
                // Outside the lock: a delivery that cannot be handed over acknowledges itself.
                match reply {
                    Reply::First(Some(reply)) => drop(reply.send(delivery)),
                    // A call's later outputs: dropping acknowledges them.
                    Reply::First(None) => drop(delivery),
                    Reply::Stream(tx) => drop(tx.unbounded_send(delivery)),
                    Reply::Outputs => self.outputs.send(delivery),
                }
            }
            ToParent::Done { task, outcome } => {
                let now = batch.now;
                let result: Result<(), RawTaskError> = match outcome {
                    WireOutcome::Completed => Ok(()),
                    WireOutcome::Failed(bytes) => Err(TaskError::Failed(bytes.to_vec())),
                    WireOutcome::Codec(m) => Err(TaskError::Codec { message: m.into() }),
                    WireOutcome::Panicked(m) => Err(TaskError::Panicked { message: m.into() }),
                    WireOutcome::TimedOut(ms) => Err(TaskError::TimedOut {
                        after: Duration::from_millis(ms),
                    }),
                    WireOutcome::Cancelled => Err(TaskError::Cancelled),
                };
                let (pending, wake, actions) = {
                    let mut inner = self.lock();
                    inner
                        .state
                        .handle_done(worker, task)
                        .map_err(|v| v.to_string())?;
                    // A sticky replay released, or the poison pill of a recycling.
                    let wake = inner.state.has_transmit(worker);
                    let pending = inner.pending.remove(&task);
                    if let Some(p) = &pending {
                        let latency = now.saturating_duration_since(p.since);
                        inner.workers[worker].account.ended(
                            result.is_ok(),
                            latency,
                            &self.lanes[worker].instruments,
                        );
                    }
                    // A retirement, or a retry placed in the room this made.
                    (pending, wake, self.decisions(&mut inner))
                };
                if wake {
                    self.wake_writer(worker);
                }
                batch.room_freed = true;
                actions.run(self);
                if let Some(p) = pending {
                    p.done.send(result);
                }
            }
            ToParent::Bye => {
                self.lock()
                    .state
                    .handle_bye(worker)
                    .map_err(|v| v.to_string())?;
            }
            ToParent::Alive => {}
            ToParent::Stats(stats) => {
                let now = batch.now;
                let mut inner = self.lock();
                let (held, unacked) = (inner.state.held(worker), inner.state.unacked(worker));
                inner.workers[worker].account.report(
                    stats,
                    now,
                    held,
                    unacked,
                    &self.lanes[worker].instruments,
                );
            }
            ToParent::Log {
                level,
                task,
                target,
                message,
            } => super::relay::relay(&self.settings.name, worker, level, task, target, message),
            ToParent::Ready { .. } => return Err("a second handshake".into()),
            ToParent::Rejected { reason } => return Err(format!("the worker hung up: {reason}")),
            ToParent::InitFailed { message } => return Err(format!("init failed late: {message}")),
        }
        Ok(())
    }
}

impl<O: Send + 'static> AckSink for Shared<O> {
    fn ack(&self, worker: usize) {
        let wake = {
            let mut inner = self.lock();
            inner.state.handle_ack(worker);
            inner.state.has_transmit(worker)
        };
        if wake {
            self.wake_writer(worker);
        }
    }
}

/// Where one output goes, taken from its task's pending entry under the lock.
enum Reply<O> {
    Outputs,
    First(Option<futures_channel::oneshot::Sender<Delivery<O>>>),
    Stream(futures_channel::mpsc::UnboundedSender<Delivery<O>>),
}

/// The text of a panic's payload.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
