//! A member's lanes to the broker: tasks into the local pool, outputs and ends in order onto
//! the lane to the parent ([`super::up`]), heartbeats and progress.

use super::serve::{lock, Finished, Serving, Taken};
use super::up::Outgoing;
use crate::wire::{self, Alive, EndMsg, Outcome, TaskMsg};
use async_nats::jetstream::{AckKind, Message as JsMessage};
use looppool_core::Worker;
use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

impl<W: Worker> Serving<W> {
    /// Starts one delivered task in the local pool.
    pub(super) async fn take(
        self: &Arc<Self>,
        message: JsMessage,
        finished: &mpsc::UnboundedSender<Finished>,
    ) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let task = match self
            .sealer
            .unpack::<TaskMsg>(&message.subject, &message.payload)
        {
            Ok(t) if t.run == self.parent => t,
            Ok(t) => {
                self.refusals
                    .refuse(format_args!("task {} of another parent", t.id));
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
            Err(e) => {
                self.refusals.refuse(format_args!("a task: {e}"));
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let deliveries = task
            .prior
            .saturating_add(u32::try_from(delivered).unwrap_or(u32::MAX));
        let seq = message.info().map_or(0, |i| i.stream_sequence);
        if lock(&self.running).contains_key(&task.id) {
            // Redelivered while it runs here: the run under way acknowledges it.
            return;
        }
        let found = lock(&self.taken).record((task.id, task.prior), seq);
        match found {
            Taken::First => {}
            // Its end was sent, its acknowledgement lost: not to be run again.
            Taken::Redelivered => {
                let _ = message.double_ack().await;
                return;
            }
            Taken::Copy => {
                self.refusals.refuse(format_args!(
                    "task {} stored a second time (a replay)",
                    task.id
                ));
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        }
        // Tasks are taken one at a time: nothing took this one meanwhile.
        lock(&self.running).insert(task.id, message);
        let id = task.id;
        let fail = |outcome: Outcome| {
            let _ = finished.send(Finished {
                local: None,
                id,
                deliveries,
                worker: 0,
                outcome,
            });
        };
        if lock(&self.cancels).take_early(id) {
            return fail(Outcome::Cancelled);
        }
        let value: W::Task = match wire::decode(&task.payload) {
            Ok(v) => v,
            Err(e) => return fail(Outcome::Codec(format!("cannot decode the task: {e}"))),
        };
        let handle = match self.local.submit(value).await {
            Ok(h) => h,
            Err(e) => {
                return fail(Outcome::Lost(format!(
                    "the member's workers did not take it: {e}"
                )))
            }
        };
        let local = handle.id();
        let worker = u32::try_from(handle.worker()).unwrap_or(u32::MAX);
        lock(&self.ids).insert(local, id);
        let cancelled = lock(&self.cancels).watch(id);
        self.changed.notify_waiters();
        let finished = finished.clone();
        let me = self.clone();
        tokio::spawn(async move {
            let mut handle = handle;
            let ended = tokio::select! {
                ended = &mut handle => ended.map_err(local_outcome),
                Ok(()) = cancelled => {
                    // Unless it ended meanwhile, the parent's cancel ended it.
                    let aborted = handle.abort();
                    match handle.await {
                        Err(looppool_core::TaskError::Cancelled) if aborted => {
                            Err(Outcome::Cancelled)
                        }
                        ended => ended.map_err(local_outcome),
                    }
                }
            };
            lock(&me.cancels).done(id);
            let outcome = match ended {
                Ok(()) => Outcome::Done,
                Err(outcome) => outcome,
            };
            let _ = finished.send(Finished {
                local: Some(local),
                id,
                deliveries,
                worker,
                outcome,
            });
        });
    }

    /// Orders outputs and ends: every output of a task goes on the lane before the task's
    /// end, which carries the count of its outputs.
    pub(super) async fn pump(
        self: Arc<Self>,
        mut finished: mpsc::UnboundedReceiver<Finished>,
        lane: mpsc::UnboundedSender<Outgoing<W::Output>>,
    ) {
        let outputs = self.local.outputs();
        let mut counts: HashMap<u64, u32> = HashMap::new();
        loop {
            tokio::select! {
                biased;
                d = outputs.recv() => match d {
                    Some(d) => self.forward(d, &mut counts, &lane).await,
                    None => return,
                },
                f = finished.recv() => {
                    let Some(f) = f else { return };
                    // Outputs of the task reached the local stream before its end.
                    while let Some(d) = outputs.try_recv() {
                        self.forward(d, &mut counts, &lane).await;
                    }
                    if let Some(local) = f.local {
                        lock(&self.ids).remove(&local);
                    }
                    let end = EndMsg {
                        id: f.id,
                        deliveries: f.deliveries,
                        outputs: counts.remove(&f.id).unwrap_or(0),
                        worker: f.worker,
                        outcome: f.outcome,
                    };
                    let _ = lane.send(Outgoing::End(end));
                }
            }
        }
    }

    async fn forward(
        &self,
        delivery: looppool_core::Delivery<W::Output>,
        counts: &mut HashMap<u64, u32>,
        lane: &mpsc::UnboundedSender<Outgoing<W::Output>>,
    ) {
        let id = match delivery.task_id() {
            None => None,
            Some(local) => loop {
                // The id is recorded right after the local submission returns.
                let mut notified = pin!(self.changed.notified());
                notified.as_mut().enable();
                if let Some(id) = lock(&self.ids).get(&local) {
                    break Some(*id);
                }
                notified.await;
            },
        };
        if let Some(id) = id {
            *counts.entry(id).or_default() += 1;
        }
        let _ = lane.send(Outgoing::Output(id, delivery));
    }

    pub(super) async fn heartbeat(self: Arc<Self>, every: Duration) {
        let subject = self.names.alive(&self.member);
        let mut tick = tokio::time::interval(every);
        let mut seq = 0;
        loop {
            tick.tick().await;
            seq += 1;
            let alive = Alive {
                nonce: self.nonce,
                seq,
                run: self.parent,
            };
            if let Ok(bytes) = self.sealer.pack(&subject, &alive) {
                let _ = self
                    .broker
                    .client
                    .publish(subject.clone(), bytes.into())
                    .await;
            }
        }
    }

    /// Tells JetStream the running tasks are in progress, so their ack wait starts over.
    pub(super) async fn progress(self: Arc<Self>, ack_wait: Duration) {
        let mut tick = tokio::time::interval((ack_wait / 3).max(Duration::from_millis(30)));
        loop {
            tick.tick().await;
            let messages: Vec<JsMessage> = lock(&self.running).values().cloned().collect();
            for m in messages {
                let _ = m.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// A local task's end as the broker carries it: a worker's error encoded, for the parent to
/// decode as the worker's error type.
fn local_outcome<F: serde::Serialize + std::fmt::Display>(
    error: looppool_core::TaskError<F>,
) -> Outcome {
    use looppool_core::TaskError as E;
    match error {
        E::Failed(failure) => match wire::encode(&failure) {
            Ok(bytes) => Outcome::Failed(bytes),
            Err(e) => Outcome::Codec(format!("cannot encode the worker's error: {e}")),
        },
        E::Panicked { message } => Outcome::Panicked(message),
        E::TimedOut { after } => Outcome::TimedOut(after.as_millis() as u64),
        E::Codec { message } => Outcome::Codec(message),
        other => Outcome::Lost(other.to_string()),
    }
}
