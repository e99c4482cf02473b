//! A member's lanes to the broker: tasks into the local pool, outputs and ends out in order,
//! heartbeats and progress.

use super::serve::{lock, Finished, Heard, Serving, Taken};
use crate::wire::{self, Alive, EndMsg, Outcome, OutputMsg, TaskMsg, Up, UpMsg};
use async_nats::jetstream::{AckKind, Message as JsMessage};
use looppool_core::Worker;
use std::collections::{HashMap, VecDeque};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// What the pump hands the lane to the parent.
pub(super) enum Outgoing<O> {
    /// An output of the task with this (parent) id, or unsolicited.
    Output(Option<u64>, looppool_core::Delivery<O>),
    End(EndMsg),
}

/// What a message sent and not yet confirmed holds until the parent has it.
enum Hold<O> {
    /// The local output, acknowledged to the worker once the parent has it.
    Output(looppool_core::Delivery<O>),
    /// The task that ended.
    End(u64),
}

/// A message sent to the parent and not yet confirmed.
struct Unconfirmed<O> {
    seq: u64,
    bytes: bytes::Bytes,
    hold: Hold<O>,
}

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

    /// Sends outputs and ends to the parent in order, as many outputs as the result credit
    /// allows, and keeps each until the parent says it has it: then an output is acknowledged
    /// to the local worker (returning its local credit), and an ended task to JetStream. What
    /// the parent has not confirmed within `resend` is sent again, in order.
    pub(super) async fn up_lane(
        self: Arc<Self>,
        mut lane: mpsc::UnboundedReceiver<Outgoing<W::Output>>,
        credit: u64,
        mut heard: watch::Receiver<Heard>,
        resend: Duration,
    ) {
        let subject = self.names.up(&self.member);
        let mut seq = 0u64;
        let mut outputs = 0u64;
        let mut unconfirmed: VecDeque<Unconfirmed<W::Output>> = VecDeque::new();
        let mut news = Instant::now();
        let mut tick = tokio::time::interval(resend);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        let mut deaf = false;
        while (open || !unconfirmed.is_empty()) && !deaf {
            let room = outputs.saturating_sub(heard.borrow().acked) < credit;
            tokio::select! {
                biased;
                changed = heard.changed() => {
                    if changed.is_err() {
                        // The serving loop ended: nothing more will be confirmed.
                        deaf = true;
                        continue;
                    }
                    let received = heard.borrow_and_update().received;
                    while unconfirmed.front().is_some_and(|u| u.seq <= received) {
                        let Some(u) = unconfirmed.pop_front() else { break };
                        news = Instant::now();
                        match u.hold {
                            Hold::Output(delivery) => drop(delivery),
                            Hold::End(id) => self.confirmed_end(id).await,
                        }
                    }
                }
                next = lane.recv(), if open && room => match next {
                    Some(item) => {
                        seq += 1;
                        let (body, hold) = match item {
                            Outgoing::Output(task, delivery) => {
                                outputs += 1;
                                let payload = wire::encode(delivery.value())
                                    .map_err(|e| format!("cannot encode it: {e}"));
                                (Up::Output(OutputMsg { task, payload }), Hold::Output(delivery))
                            }
                            Outgoing::End(end) => {
                                let id = end.id;
                                (Up::End(end), Hold::End(id))
                            }
                        };
                        let Some(bytes) = self.pack_up(&subject, seq, body) else {
                            continue;
                        };
                        self.send_up(&subject, bytes.clone()).await;
                        if unconfirmed.is_empty() {
                            news = Instant::now();
                        }
                        unconfirmed.push_back(Unconfirmed { seq, bytes, hold });
                    }
                    None => open = false,
                },
                _ = tick.tick(), if !unconfirmed.is_empty() => {
                    if news.elapsed() >= resend {
                        news = Instant::now();
                        let again: Vec<bytes::Bytes> =
                            unconfirmed.iter().map(|u| u.bytes.clone()).collect();
                        self.resent
                            .fetch_add(again.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        for bytes in again {
                            self.send_up(&subject, bytes).await;
                        }
                    }
                }
            }
        }
    }

    /// Seals message `seq`; an output too large for the broker goes as a note saying so, for
    /// the parent to fail its task rather than wait for it.
    fn pack_up(&self, subject: &str, seq: u64, body: Up) -> Option<bytes::Bytes> {
        let mut msg = UpMsg {
            nonce: self.nonce,
            seq,
            body,
        };
        let limit = self.broker.max_payload();
        loop {
            let bytes = match self.sealer.pack(subject, &msg) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!("cannot seal message {seq}: {e}");
                    return None;
                }
            };
            match &mut msg.body {
                Up::Output(output) if bytes.len() > limit && output.payload.is_ok() => {
                    let size = bytes.len();
                    tracing::error!(task = output.task, "output of {size} bytes not sent");
                    output.payload = Err(format!(
                        "it is {size} bytes; the broker takes messages up to {limit} bytes \
                         (its max_payload)"
                    ));
                }
                _ => return Some(bytes.into()),
            }
        }
    }

    /// Hands a message to the client, unless cut off from the broker (it is sent again once
    /// the connection is back).
    async fn send_up(&self, subject: &str, bytes: bytes::Bytes) {
        if self.broker.conn.is_up() {
            let _ = self.broker.client.publish(subject.to_string(), bytes).await;
        }
    }

    /// The parent has the end of task `id`: the work queue may drop the task. Should the
    /// acknowledgement be lost, the task comes back after the ack wait, and is acknowledged
    /// then without running again (or runs elsewhere, and the parent ignores its second end).
    async fn confirmed_end(&self, id: u64) {
        let message = lock(&self.running).remove(&id);
        if let Some(m) = message {
            let _ = m.ack().await;
        }
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
