//! The state every part of a running pool shares: the sans-IO state under one lock, the task
//! handles waiting for an end, and the events that wake writers, submitters and `stop`.
//!
//! Lock discipline: the lock is never held across an await, and nothing that can take the lock
//! again (dropping a [`Delivery`], which acknowledges it) happens while it is held. Events are
//! notified after the state change they announce, and waiters register their listener while
//! holding the lock (or re-check after registering), so no wake-up is lost.

use super::handle::{AckSink, Acker, Delivery};
use crate::error::{Exit, TaskError};
use crate::launch::Killer;
use crate::protocol::{split_body, ToParent, WireOutcome};
use crate::runtime::Runtime;
use crate::state::{PoolState, TaskId};
use event_listener::Event;
use futures_channel::oneshot;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// A task handle's sending side, and where its outputs go if it was a request-reply call.
pub(crate) struct Pending<O> {
    pub(crate) done: oneshot::Sender<Result<(), TaskError>>,
    pub(crate) reply: Option<oneshot::Sender<Delivery<O>>>,
}

pub(crate) struct Inner<O> {
    pub(crate) state: PoolState<Arc<[u8]>>,
    pub(crate) pending: HashMap<TaskId, Pending<O>>,
    pub(crate) killers: Vec<Option<Killer>>,
    pub(crate) exits: Vec<Option<Exit>>,
    pub(crate) pids: Vec<Option<u32>>,
    /// Workers killed because the stop deadline passed, in the order they were killed.
    pub(crate) killed_at_deadline: Vec<usize>,
}

/// Settings the running pool consults.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) max_frame: usize,
    pub(crate) stop_timeout: Duration,
}

pub(crate) struct Shared<O> {
    inner: Mutex<Inner<O>>,
    /// Per worker: room for a task was made, or the worker exited, or the pool began stopping.
    pub(crate) room: Vec<Event>,
    /// Per worker: something is waiting to be written.
    pub(crate) writers: Vec<Event>,
    /// A worker exited.
    pub(crate) exited: Event,
    pub(crate) outputs: async_channel::Sender<Delivery<O>>,
    pub(crate) outputs_rx: async_channel::Receiver<Delivery<O>>,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) settings: Settings,
}

impl<O> Shared<O> {
    pub(crate) fn new(inner: Inner<O>, runtime: Arc<dyn Runtime>, settings: Settings) -> Self {
        let n = inner.state.size();
        let (outputs, outputs_rx) = async_channel::unbounded();
        Self {
            inner: Mutex::new(inner),
            room: (0..n).map(|_| Event::new()).collect(),
            writers: (0..n).map(|_| Event::new()).collect(),
            exited: Event::new(),
            outputs,
            outputs_rx,
            runtime,
            settings,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<O>> {
        // A panic while holding the lock leaves the bookkeeping as consistent as any single
        // step of it; carrying on beats poisoning every later call.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes everything that waits on the pool's phase: submitters and writers of every worker.
    pub(crate) fn wake_all(&self) {
        for e in self.room.iter().chain(&self.writers) {
            e.notify(usize::MAX);
        }
        self.exited.notify(usize::MAX);
    }

    /// Worker `worker` (incarnation `generation`) is gone: its tasks are lost.
    pub(crate) fn worker_exited(
        &self,
        worker: usize,
        generation: u64,
        exit: Exit,
        cause: Option<String>,
    ) {
        let lost: Vec<oneshot::Sender<_>> = {
            let mut inner = self.lock();
            if inner.state.generation(worker) != generation {
                return;
            }
            let lost = inner.state.handle_exit(worker);
            inner.exits[worker].get_or_insert(exit);
            inner.killers[worker] = None;
            lost.iter()
                .filter_map(|id| inner.pending.remove(id))
                .map(|p| p.done)
                .collect()
        };
        if !lost.is_empty() || !exit.success() || cause.is_some() {
            tracing::warn!(
                pool = %self.settings.name,
                worker,
                %exit,
                lost = lost.len(),
                cause = cause.as_deref().unwrap_or(""),
                "looppool worker ended"
            );
        }
        for done in lost {
            let _ = done.send(Err(TaskError::Lost {
                worker,
                exit,
                cause: cause.clone(),
            }));
        }
        self.wake_all();
    }
}

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    /// Handles one frame from worker `worker`. An error ends the link.
    pub(crate) fn handle_frame(
        self: &Arc<Self>,
        worker: usize,
        generation: u64,
        body: &[u8],
    ) -> Result<(), String> {
        let (header, payload) =
            split_body::<ToParent<'_>>(body).map_err(|e| format!("malformed frame: {e}"))?;
        match header {
            ToParent::Output { task } => {
                let value: O = postcard::from_bytes(payload)
                    .map_err(|e| format!("malformed output payload: {e}"))?;
                let reply = {
                    let mut inner = self.lock();
                    inner
                        .state
                        .handle_output(worker)
                        .map_err(|v| v.to_string())?;
                    task.and_then(|t| inner.pending.get_mut(&t)?.reply.take())
                };
                let acker = Acker {
                    sink: self.clone(),
                    worker,
                    generation,
                };
                let delivery = Delivery::new(value, worker, task, acker);
                // Outside the lock: a delivery that cannot be handed over acknowledges itself.
                match reply {
                    Some(reply) => drop(reply.send(delivery)),
                    None => drop(self.outputs.try_send(delivery)),
                }
            }
            ToParent::Done { task, outcome } => {
                let result = match outcome {
                    WireOutcome::Completed => Ok(()),
                    WireOutcome::Failed(m) => Err(TaskError::Failed { message: m.into() }),
                    WireOutcome::Panicked(m) => Err(TaskError::Panicked { message: m.into() }),
                };
                let pending = {
                    let mut inner = self.lock();
                    inner
                        .state
                        .handle_done(worker, task)
                        .map_err(|v| v.to_string())?;
                    inner.pending.remove(&task)
                };
                self.room[worker].notify(usize::MAX);
                if let Some(p) = pending {
                    let _ = p.done.send(result);
                }
            }
            ToParent::Bye => {
                self.lock()
                    .state
                    .handle_bye(worker)
                    .map_err(|v| v.to_string())?;
            }
            ToParent::Ready { .. } => return Err("a second handshake".into()),
            ToParent::Rejected { reason } => return Err(format!("the worker hung up: {reason}")),
            ToParent::InitFailed { message } => return Err(format!("init failed late: {message}")),
        }
        Ok(())
    }
}

impl<O: Send + 'static> AckSink for Shared<O> {
    fn ack(&self, worker: usize, generation: u64) {
        let wake = {
            let mut inner = self.lock();
            inner.state.handle_ack(worker, generation);
            inner.state.has_transmit(worker)
        };
        if wake {
            self.writers[worker].notify(1);
        }
    }
}
