//! The lane from a member to its parent: outputs and task ends, in order, numbered, several to
//! a message when several are ready, each kept until the parent confirms it.

use super::serve::{lock, Heard, Serving};
use crate::wire::{self, EndMsg, OutputMsg, Up, UpMsg};
use looppool_core::Worker;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// What the pump hands the lane.
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
    /// The number of its last item.
    last: u64,
    bytes: bytes::Bytes,
    holds: Vec<Hold<O>>,
}

/// Items gathered into one message at most.
const BATCH_ITEMS: usize = 256;
/// Bytes of items past which a message takes no more (one larger item goes alone).
const BATCH_BYTES: usize = 64 * 1024;
/// Room left in a message for its envelope and seal.
const ENVELOPE: usize = 1024;

/// The lane's state between messages.
struct Lane<O> {
    /// The number of the last item sent.
    seq: u64,
    /// Outputs sent, in all.
    outputs: u64,
    unconfirmed: VecDeque<Unconfirmed<O>>,
    /// When the parent last confirmed something, or the lane last sent after a quiet spell.
    news: Instant,
    /// An item taken that did not fit the last message: the first of the next.
    carry: Option<Outgoing<O>>,
}

impl<W: Worker> Serving<W> {
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
        let mut state = Lane {
            seq: 0,
            outputs: 0,
            unconfirmed: VecDeque::new(),
            news: Instant::now(),
            carry: None,
        };
        let mut tick = tokio::time::interval(resend);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        loop {
            let room = |s: &Lane<W::Output>, heard: &watch::Receiver<Heard>| {
                s.outputs.saturating_sub(heard.borrow().acked) < credit
            };
            if state.carry.is_some() && room(&state, &heard) {
                let first = state.carry.take();
                self.send_batch(&subject, &mut state, first, &mut lane, &heard, credit)
                    .await;
                continue;
            }
            if !open && state.carry.is_none() && state.unconfirmed.is_empty() {
                return;
            }
            let take = open && state.carry.is_none() && room(&state, &heard);
            tokio::select! {
                biased;
                changed = heard.changed() => {
                    if changed.is_err() {
                        // The serving loop ended: nothing more will be confirmed.
                        return;
                    }
                    let received = heard.borrow_and_update().received;
                    while state.unconfirmed.front().is_some_and(|u| u.last <= received) {
                        let Some(u) = state.unconfirmed.pop_front() else { break };
                        state.news = Instant::now();
                        for hold in u.holds {
                            match hold {
                                Hold::Output(delivery) => drop(delivery),
                                Hold::End(id) => self.confirmed_end(id).await,
                            }
                        }
                    }
                }
                next = lane.recv(), if take => match next {
                    Some(item) => {
                        self.send_batch(&subject, &mut state, Some(item), &mut lane, &heard, credit)
                            .await;
                    }
                    None => open = false,
                },
                _ = tick.tick(), if !state.unconfirmed.is_empty() => {
                    if state.news.elapsed() >= resend {
                        state.news = Instant::now();
                        let again: Vec<bytes::Bytes> =
                            state.unconfirmed.iter().map(|u| u.bytes.clone()).collect();
                        let items: u64 = state.unconfirmed.iter().map(|u| u.holds.len() as u64).sum();
                        self.resent.fetch_add(items, Ordering::Relaxed);
                        for bytes in again {
                            self.send_up(&subject, bytes).await;
                        }
                    }
                }
            }
        }
    }

    /// Sends `first` and whatever else is ready and fits (within the result credit) as one
    /// message; an item that does not fit is carried to the next.
    async fn send_batch(
        &self,
        subject: &str,
        state: &mut Lane<W::Output>,
        first: Option<Outgoing<W::Output>>,
        lane: &mut mpsc::UnboundedReceiver<Outgoing<W::Output>>,
        heard: &watch::Receiver<Heard>,
        credit: u64,
    ) {
        let limit = self.broker.max_payload().saturating_sub(ENVELOPE);
        let mut body = Vec::new();
        let mut holds = Vec::new();
        let mut size = 0;
        let mut next = first;
        while let Some(item) = next.take() {
            let (up, hold, len) = self.prepare(item, limit);
            if !body.is_empty() && size + len > limit {
                // Goes first in the next message.
                state.carry = Some(match (up, hold) {
                    (Up::Output(output), Hold::Output(delivery)) => {
                        Outgoing::Output(output.task, delivery)
                    }
                    (Up::End(end), _) => Outgoing::End(end),
                    (Up::Output(_), Hold::End(_)) => unreachable!("an item's body and hold agree"),
                });
                break;
            }
            if matches!(up, Up::Output(_)) {
                state.outputs += 1;
            }
            size += len;
            body.push(up);
            holds.push(hold);
            let room = state.outputs.saturating_sub(heard.borrow().acked) < credit;
            if body.len() < BATCH_ITEMS && size < BATCH_BYTES && room {
                next = lane.try_recv().ok();
            }
        }
        if body.is_empty() {
            return;
        }
        let first_seq = state.seq + 1;
        state.seq += body.len() as u64;
        let msg = UpMsg {
            nonce: self.nonce,
            seq: first_seq,
            body,
        };
        let bytes: bytes::Bytes = match self.sealer.pack(subject, &msg) {
            Ok(bytes) => bytes.into(),
            Err(e) => {
                tracing::error!("cannot seal messages {first_seq}..={}: {e}", state.seq);
                return;
            }
        };
        self.send_up(subject, bytes.clone()).await;
        if state.unconfirmed.is_empty() {
            state.news = Instant::now();
        }
        state.unconfirmed.push_back(Unconfirmed {
            last: state.seq,
            bytes,
            holds,
        });
    }

    /// The wire form of `item`, what it holds until confirmed, and its encoded size. An output
    /// too large for the broker goes as a note saying so, for the parent to fail its task
    /// rather than wait for it.
    fn prepare(&self, item: Outgoing<W::Output>, limit: usize) -> (Up, Hold<W::Output>, usize) {
        match item {
            Outgoing::Output(task, delivery) => {
                let payload = match wire::encode(delivery.value()) {
                    Ok(bytes) if bytes.len() > limit => {
                        let size = bytes.len();
                        tracing::error!(task, "output of {size} bytes not sent");
                        Err(format!(
                            "it is {size} bytes; the broker takes messages up to {} bytes \
                             (its max_payload)",
                            self.broker.max_payload()
                        ))
                    }
                    Ok(bytes) => Ok(bytes),
                    Err(e) => Err(format!("cannot encode it: {e}")),
                };
                let len = payload.as_ref().map_or_else(String::len, Vec::len) + 16;
                let output = OutputMsg { task, payload };
                (Up::Output(output), Hold::Output(delivery), len)
            }
            Outgoing::End(end) => {
                let len = match &end.outcome {
                    wire::Outcome::Done | wire::Outcome::TimedOut(_) => 0,
                    wire::Outcome::Failed(t)
                    | wire::Outcome::Panicked(t)
                    | wire::Outcome::Lost(t) => t.len(),
                } + 32;
                let id = end.id;
                (Up::End(end), Hold::End(id), len)
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
        self.ended.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}
