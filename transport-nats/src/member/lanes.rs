//! A member's lanes to the broker: tasks into the local pool, outputs and ends out in order,
//! heartbeats and progress.

use super::serve::{lock, EndOut, Finished, Serving, Taken};
use crate::broker::{self, PublishFailure};
use crate::wire::{self, Alive, EndMsg, Outcome, OutputMsg, TaskMsg};
use async_nats::jetstream::{AckKind, Message as JsMessage};
use futures_util::StreamExt;
use looppool_core::Worker;
use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

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
                outcome,
            });
        };
        let value: W::Task = match wire::decode(&task.payload) {
            Ok(v) => v,
            Err(e) => return fail(Outcome::Failed(format!("cannot decode the task: {e}"))),
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
        lock(&self.ids).insert(local, id);
        self.changed.notify_waiters();
        let finished = finished.clone();
        tokio::spawn(async move {
            let outcome = match handle.await {
                Ok(()) => Outcome::Done,
                Err(e) => local_outcome(e),
            };
            let _ = finished.send(Finished {
                local: Some(local),
                id,
                deliveries,
                outcome,
            });
        });
    }

    /// Orders outputs and ends: every output of a task goes on the output lane before the
    /// task's end goes on the end lane, which carries the count of its outputs.
    pub(super) async fn pump(
        self: Arc<Self>,
        mut finished: mpsc::UnboundedReceiver<Finished>,
        out_lane: mpsc::UnboundedSender<(Option<u64>, looppool_core::Delivery<W::Output>)>,
        end_lane: mpsc::UnboundedSender<(EndOut, Option<JsMessage>)>,
    ) {
        let outputs = self.local.outputs();
        let mut counts: HashMap<u64, u32> = HashMap::new();
        loop {
            tokio::select! {
                biased;
                d = outputs.recv() => match d {
                    Some(d) => self.forward(d, &mut counts, &out_lane).await,
                    None => return,
                },
                f = finished.recv() => {
                    let Some(f) = f else { return };
                    // Outputs of the task reached the local stream before its end.
                    while let Some(d) = outputs.try_recv() {
                        self.forward(d, &mut counts, &out_lane).await;
                    }
                    if let Some(local) = f.local {
                        lock(&self.ids).remove(&local);
                    }
                    let message = lock(&self.running).get(&f.id).cloned();
                    let end = EndMsg {
                        nonce: self.nonce,
                        id: f.id,
                        deliveries: f.deliveries,
                        outputs: counts.remove(&f.id).unwrap_or(0),
                        outcome: f.outcome,
                    };
                    let _ = end_lane.send((EndOut { end }, message));
                }
            }
        }
    }

    async fn forward(
        &self,
        delivery: looppool_core::Delivery<W::Output>,
        counts: &mut HashMap<u64, u32>,
        out_lane: &mpsc::UnboundedSender<(Option<u64>, looppool_core::Delivery<W::Output>)>,
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
        let _ = out_lane.send((id, delivery));
    }

    /// Stores outputs in order, as many at once as the result credit allows; an output is
    /// acknowledged to the local worker (returning its local credit) once the broker stored it.
    pub(super) async fn output_lane(
        self: Arc<Self>,
        mut lane: mpsc::UnboundedReceiver<(Option<u64>, looppool_core::Delivery<W::Output>)>,
        credit: u64,
        mut granted: watch::Receiver<u64>,
    ) {
        let subject = self.names.out(&self.member);
        let mut seq = 0u64;
        let mut storing = futures_util::stream::FuturesOrdered::new();
        let mut open = true;
        while open || !storing.is_empty() {
            let room = seq.saturating_sub(*granted.borrow()) < credit;
            tokio::select! {
                biased;
                Some(()) = storing.next(), if !storing.is_empty() => {}
                next = lane.recv(), if open && room => match next {
                    Some((task, delivery)) => {
                        seq += 1;
                        let msg_id = format!("{}-{}-o{seq}", self.member, self.run);
                        let payload = wire::encode(delivery.value())
                            .map_err(|e| format!("cannot encode it: {e}"));
                        let output = OutputMsg { nonce: self.nonce, seq, task, payload };
                        // Sent here, in order; confirmed below, several at a time.
                        let sent = match self.sealer.pack(&subject, &output) {
                            Ok(msg) => broker::send(&self.broker.js, &subject, &msg_id, &msg).await.ok(),
                            Err(_) => None,
                        };
                        storing.push_back(self.clone().confirm_output(msg_id, output, sent, delivery));
                    }
                    None => open = false,
                },
                changed = granted.changed(), if open && !room => {
                    if changed.is_err() {
                        // The serving loop ended: no more credit will come.
                        open = false;
                    }
                }
                else => break,
            }
        }
    }

    /// Waits until the broker stored an output sent by the lane; failing that, stores it
    /// again (the message id drops a second copy), or in its place a note saying why it
    /// cannot be (too large for the broker, most likely), so that the task's end does not
    /// wait for it and the parent reports it.
    async fn confirm_output(
        self: Arc<Self>,
        msg_id: String,
        mut output: OutputMsg,
        sent: Option<broker::AckFuture>,
        delivery: looppool_core::Delivery<W::Output>,
    ) {
        if let Some(ack) = sent {
            match ack.await {
                Ok(_) => return,
                Err(e) if broker::subject_full(&e) => {
                    self.refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(_) => {}
            }
        }
        let subject = self.names.out(&self.member);
        let task = output.task;
        let size = output.payload.as_ref().map_or(0, Vec::len);
        while let Ok(msg) = self.sealer.pack(&subject, &output) {
            match broker::publish(&self.broker.js, &subject, &msg_id, &msg, None).await {
                Ok(()) | Err(PublishFailure::NoStream) => break,
                Err(e) if output.payload.is_ok() => {
                    tracing::error!(task, "output of {size} bytes not sent: {e}");
                    output.payload = Err(format!("the broker refused {size} bytes: {e}"));
                }
                Err(e) => {
                    tracing::error!(task, "output not sent: {e}");
                    break;
                }
            }
        }
        drop(delivery);
    }

    pub(super) async fn end_lane(
        self: Arc<Self>,
        mut lane: mpsc::UnboundedReceiver<(EndOut, Option<JsMessage>)>,
    ) {
        // Ends need no order among themselves (the parent matches each to its task and its
        // output count), so they go out concurrently.
        let mut sending = futures_util::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                next = lane.recv() => match next {
                    Some((EndOut { end }, message)) => sending.push(self.send_end(end, message)),
                    None => break,
                },
                Some(()) = sending.next(), if !sending.is_empty() => {}
            }
        }
        while sending.next().await.is_some() {}
    }

    /// Publishes one task end, then acknowledges the task to JetStream.
    async fn send_end(&self, end: EndMsg, message: Option<JsMessage>) {
        let id = end.id;
        let msg_id = format!("{}-{}-e{id}-{}", self.member, self.run, end.deliveries);
        let subject = self.names.end(&self.member);
        let sent = match self.sealer.pack(&subject, &end) {
            Ok(bytes) => broker::publish(&self.broker.js, &subject, &msg_id, &bytes, None).await,
            Err(e) => Err(PublishFailure::Refused(e)),
        };
        if let Err(e) = &sent {
            tracing::error!(task = id, "task end not sent: {e}");
        }
        if let Some(m) = message {
            // Done: the work queue drops it. Should the ack be lost, the task comes back after
            // the ack wait, runs again, and the parent ignores the second end.
            if m.double_ack().await.is_err() {
                let _ = m.ack().await;
            }
        }
        lock(&self.running).remove(&id);
        self.ended
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.changed.notify_waiters();
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

/// A local task's end as the broker carries it: a worker's error as its text.
fn local_outcome<F: std::fmt::Display>(error: looppool_core::TaskError<F>) -> Outcome {
    use looppool_core::TaskError as E;
    match error {
        E::Failed(failure) => Outcome::Failed(failure.to_string()),
        E::Panicked { message } => Outcome::Panicked(message),
        E::TimedOut { after } => Outcome::TimedOut(after.as_millis() as u64),
        lost @ E::Lost { .. } => Outcome::Lost(lost.to_string()),
        other => Outcome::Failed(other.to_string()),
    }
}
