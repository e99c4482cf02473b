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

/// An item taken from the pump, in its wire form, waiting to be sent.
struct Ready<O> {
    up: Up,
    hold: Hold<O>,
    /// Its encoded size, near enough.
    len: usize,
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
    /// Items taken from the pump and not sent yet, in order: outputs past the result credit,
    /// and the ends of their tasks behind them.
    waiting: VecDeque<Ready<O>>,
}

impl<W: Worker> Serving<W> {
    /// Sends outputs and ends to the parent in order, as many outputs as the result credit
    /// allows, and keeps each until the parent says it has it: then an output is acknowledged
    /// to the local worker (returning its local credit), and an ended task to JetStream. What
    /// the parent has not confirmed after `resend` is sent again, in order.
    ///
    /// Outputs past the credit wait here, in order, and so does the end of their task; the
    /// ends of other tasks with no output waiting go on (a program may wait for such a task's
    /// end before it reads the outputs of another).
    pub(super) async fn up_lane(
        self: Arc<Self>,
        mut lane: mpsc::UnboundedReceiver<Outgoing<W::Output>>,
        credit: u64,
        mut heard: watch::Receiver<Heard>,
        resend: Duration,
    ) {
        let subject = self.names.up(&self.member);
        let limit = self.broker.max_payload().saturating_sub(ENVELOPE);
        let mut state = Lane {
            seq: 0,
            outputs: 0,
            unconfirmed: VecDeque::new(),
            news: Instant::now(),
            waiting: VecDeque::new(),
        };
        let mut tick = tokio::time::interval(resend / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        loop {
            while open {
                match lane.try_recv() {
                    Ok(item) => state.waiting.push_back(self.prepare(item, limit)),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            let acked = heard.borrow().acked;
            while self
                .send_batch(&subject, &mut state, acked, credit, limit)
                .await
            {}
            if !open && state.waiting.is_empty() && state.unconfirmed.is_empty() {
                return;
            }
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
                next = lane.recv(), if open => match next {
                    Some(item) => state.waiting.push_back(self.prepare(item, limit)),
                    None => open = false,
                },
                _ = tick.tick(), if !state.unconfirmed.is_empty() => {
                    if state.news.elapsed() >= resend {
                        state.news = Instant::now();
                        let again: Vec<(bytes::Bytes, u64)> = state
                            .unconfirmed
                            .iter()
                            .map(|u| (u.bytes.clone(), u.holds.len() as u64))
                            .collect();
                        for (bytes, items) in again {
                            if self.send_up(&subject, bytes).await {
                                self.resent.fetch_add(items, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Sends, as one message, the waiting items that may go now, in order: outputs while the
    /// result credit lasts, and ends of tasks with no output still waiting. Whether it sent
    /// anything.
    async fn send_batch(
        &self,
        subject: &str,
        state: &mut Lane<W::Output>,
        acked: u64,
        credit: u64,
        limit: usize,
    ) -> bool {
        let mut body = Vec::new();
        let mut holds = Vec::new();
        let mut size = 0;
        let mut outputs = state.outputs;
        let mut kept = VecDeque::new();
        // Tasks with an output still waiting: their ends wait too.
        let mut held: Vec<Option<u64>> = Vec::new();
        while let Some(item) = state.waiting.pop_front() {
            let full = body.len() >= BATCH_ITEMS || size >= BATCH_BYTES;
            if full || (!body.is_empty() && size + item.len > limit) {
                kept.push_back(item);
                break;
            }
            let may = match &item.up {
                Up::Output(o) => {
                    let room = held.is_empty() && outputs.saturating_sub(acked) < credit;
                    if !room {
                        held.push(o.task);
                    }
                    room
                }
                Up::End(end) => !held.contains(&Some(end.id)),
            };
            if !may {
                kept.push_back(item);
                continue;
            }
            if matches!(item.up, Up::Output(_)) {
                outputs += 1;
            }
            size += item.len;
            body.push(item.up);
            holds.push(item.hold);
        }
        kept.append(&mut state.waiting);
        state.waiting = kept;
        if body.is_empty() {
            return false;
        }
        let first = state.seq + 1;
        let msg = UpMsg {
            nonce: self.nonce,
            seq: first,
            body,
        };
        let bytes: bytes::Bytes = match self.sealer.pack(subject, &msg) {
            Ok(bytes) => bytes.into(),
            Err(e) => {
                // Not seen in practice: postcard encodes bytes, strings and numbers without
                // fail. The items are given up; a task among them never ends here (it stays
                // running, and is taken back once this member is gone).
                tracing::error!("cannot seal messages from {first}: {e}");
                return false;
            }
        };
        state.seq += msg.body.len() as u64;
        state.outputs = outputs;
        self.send_up(subject, bytes.clone()).await;
        if state.unconfirmed.is_empty() {
            state.news = Instant::now();
        }
        state.unconfirmed.push_back(Unconfirmed {
            last: state.seq,
            bytes,
            holds,
        });
        true
    }

    /// The wire form of `item`, what it holds until confirmed, and its encoded size. An output
    /// too large for the broker goes as a note saying so, for the parent to fail its task
    /// rather than wait for it, and so does a worker's error; a panic's or loss's text too
    /// long for the broker is cut.
    fn prepare(&self, item: Outgoing<W::Output>, limit: usize) -> Ready<W::Output> {
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
                Ready {
                    up: Up::Output(OutputMsg {
                        task,
                        worker: u32::try_from(delivery.worker()).unwrap_or(u32::MAX),
                        payload,
                    }),
                    hold: Hold::Output(delivery),
                    len,
                }
            }
            Outgoing::End(mut end) => {
                if let wire::Outcome::Failed(bytes) = &end.outcome {
                    if bytes.len() > limit / 2 {
                        let size = bytes.len();
                        tracing::error!(
                            task = end.id,
                            "the worker's error of {size} bytes not sent"
                        );
                        end.outcome = wire::Outcome::Codec(format!(
                            "the worker's error is {size} bytes; the broker takes messages up \
                             to {} bytes (its max_payload)",
                            self.broker.max_payload()
                        ));
                    }
                }
                let len = match &mut end.outcome {
                    wire::Outcome::Done | wire::Outcome::TimedOut(_) | wire::Outcome::Cancelled => {
                        0
                    }
                    wire::Outcome::Failed(bytes) => bytes.len(),
                    wire::Outcome::Panicked(t)
                    | wire::Outcome::Lost(t)
                    | wire::Outcome::Codec(t) => {
                        cut(t, limit / 2);
                        t.len()
                    }
                } + 32;
                let id = end.id;
                Ready {
                    up: Up::End(end),
                    hold: Hold::End(id),
                    len,
                }
            }
        }
    }

    /// Hands a message to the client, unless cut off from the broker (it is sent again once
    /// the connection is back). Whether it went.
    async fn send_up(&self, subject: &str, bytes: bytes::Bytes) -> bool {
        if !self.broker.conn.is_up() {
            return false;
        }
        match self.broker.client.publish(subject.to_string(), bytes).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("a message to the parent not sent (sent again later): {e}");
                false
            }
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

/// Cuts `text` to at most `max` bytes, on a character boundary, saying so.
fn cut(text: &mut String, max: usize) {
    const NOTE: &str = " [cut]";
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(NOTE.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(NOTE);
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let mut t = "é".repeat(100);
        cut(&mut t, 51);
        assert!(t.len() <= 51 && t.ends_with(" [cut]"), "{t}");
        let mut short = "fine".to_string();
        cut(&mut short, 51);
        assert_eq!(short, "fine");
    }
}
