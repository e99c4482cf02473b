//! Taking back a gone member's tasks: rerouting the untargeted ones, losing the rest, and
//! dead-lettering a task delivered as often as the pool allows.

use super::shared::Shared;
use crate::broker;
use crate::wire::{DeadMsg, TaskMsg};
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message as JsMessage};
use futures_util::StreamExt;
use looppool_core::state::members::TakenBack;
use serde::de::DeserializeOwned;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An untargeted task taken back when no member was left to take it: it waits for one.
pub(super) struct Waiting {
    id: u64,
    prior: u32,
    payload: Vec<u8>,
}

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    /// Takes back from gone member `member`'s consumer every task it held: those it had not
    /// received at once, those it had received once the ack wait ran out. Untargeted tasks go
    /// to the next live member with room; targeted and broadcast ones are lost with it.
    /// Returns the untargeted tasks no member was there to take: once the consumer is gone,
    /// the member itself may join again and take them ([`place_waiting`](Self::place_waiting)).
    pub(super) async fn reclaim(self: &Arc<Self>, member: &str, reason: &str) -> Vec<Waiting> {
        let key = member.to_string();
        let held = |shared: &Self| shared.lock().placement.held_by(&key);
        let mut waiting = Vec::new();
        let s = &self.settings;
        // Counted from the last task taken back: waiting for room on live members is progress.
        let patience = s.ack_wait * 2 + s.member_timeout() + s.broker_timeout;
        let mut deadline = Instant::now() + patience;
        let mut consumer = None;
        loop {
            let remaining = held(self);
            if remaining == 0 {
                return waiting;
            }
            if Instant::now() >= deadline {
                let ids = self.lock().placement.tasks_of(&key);
                for id in ids {
                    let why = format!("{reason}; the broker did not give the task back");
                    self.lose(id, member, 0, why);
                }
                return waiting;
            }
            if consumer.is_none() {
                match self.unblock(member).await {
                    Ok(c) => consumer = Some(c),
                    Err(e) => {
                        tracing::debug!(member, "reclaim: consumer not reachable: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let Some(c) = consumer.as_ref() else { continue };
            let batch = c
                .fetch()
                .max_messages(remaining)
                .expires(Duration::from_millis(500))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(member, "reclaim: fetch failed: {e}");
                    consumer = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            while let Some(message) = batch.next().await {
                match message {
                    Ok(m) => {
                        if let Some(w) = self.reclaimed(member, reason, m).await {
                            waiting.push(w);
                        }
                        deadline = Instant::now() + patience;
                    }
                    Err(e) => tracing::debug!(member, "reclaim: {e}"),
                }
            }
        }
    }

    /// The gone member's consumer, with no limit on unacknowledged tasks: those it held up to
    /// its capacity no longer keep the parent from the ones never delivered.
    async fn unblock(&self, member: &str) -> Result<PullConsumer, String> {
        let stream = self.names.tasks_stream();
        self.broker
            .js
            .update_consumer_on_stream(self.member_consumer(member, -1), &stream)
            .await
            .map_err(|e| broker::error_text(&e))
    }

    /// Sends on one task taken back from `gone`; returns it if no member was there to take it.
    async fn reclaimed(
        self: &Arc<Self>,
        gone: &str,
        reason: &str,
        message: JsMessage,
    ) -> Option<Waiting> {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let task: TaskMsg = match self.sealer.unpack(&message.subject, &message.payload) {
            Ok(t) => t,
            Err(e) => {
                self.refused.refuse(format_args!(
                    "a task in the consumer of member {gone}, taking it back: {e}"
                ));
                terminate(&message, gone).await;
                return None;
            }
        };
        // Deliveries to members so far: all but this one, which came to the parent, and but
        // those the member handed back unstarted.
        let to_members = u32::try_from(delivered.max(1) - 1).unwrap_or(u32::MAX);
        let prior = {
            let mut inner = self.lock();
            let held = inner.holds(task.id, gone);
            let returned = match inner.tasks.get_mut(&task.id) {
                Some(p) if held => std::mem::take(&mut p.returned),
                _ => 0,
            };
            task.prior
                .saturating_add(to_members.saturating_sub(returned))
        };
        let mut left = None;
        match self.reroute(task.id, gone, prior, false).await {
            TakenBack::To(next) => {
                self.send_on(task.id, gone, &next, prior, task.payload)
                    .await
            }
            TakenBack::Lost => self.lose(task.id, gone, prior, reason.into()),
            TakenBack::GiveUp => self.dead_letter(gone, reason, task, prior).await,
            TakenBack::Stopped => {
                let why =
                    format!("{reason}; the pool stopped with no member left to take the task");
                self.lose(task.id, gone, prior, why);
            }
            // Cancelled: its handle ended then.
            TakenBack::Dropped => {
                self.withdraw(task.id);
            }
            TakenBack::Waiting => {
                left = Some(Waiting {
                    id: task.id,
                    prior,
                    payload: task.payload,
                });
            }
            // Ended meanwhile (`reroute` waits through `Busy`).
            _ => {}
        }
        terminate(&message, gone).await;
        left
    }

    /// Sends the tasks taken back from `gone` that no member was there to take to the first
    /// member with room, as members join; the pool's placement gives each up once it waited
    /// the member timeout from when `gone`'s last task was taken back (a pool's only member
    /// that left for a parent gone silent comes back within it), or at once if the pool is
    /// stopping.
    pub(super) async fn place_waiting(&self, gone: &str, reason: &str, waiting: Vec<Waiting>) {
        for w in waiting {
            let why = match self.reroute(w.id, gone, w.prior, true).await {
                TakenBack::To(next) => {
                    self.send_on(w.id, gone, &next, w.prior, w.payload).await;
                    continue;
                }
                TakenBack::Stopped => {
                    format!("{reason}; the pool stopped with no member left to take the task")
                }
                TakenBack::Expired => format!(
                    "{reason}; no member joined within the member timeout ({:?}) to take the \
                     task",
                    self.settings.member_timeout()
                ),
                _ => continue,
            };
            self.lose(w.id, gone, w.prior, why);
        }
    }

    /// Stores task `id`, taken back from `gone`, for member `next`, which now holds it.
    async fn send_on(&self, id: u64, gone: &str, next: &str, prior: u32, payload: Vec<u8>) {
        tracing::info!(
            task = id,
            from = gone,
            to = %next,
            deliveries = prior,
            "task redelivered to another member"
        );
        if let Err(e) = self.send_task(id, next, prior, payload).await {
            let why = format!("the broker did not take it: {e}");
            self.lose(id, next, prior, why);
        }
    }

    /// Ends a task delivered `deliveries` times, the most the pool allows, as lost, and stores
    /// it on the dead-letter stream for the program to read.
    async fn dead_letter(&self, gone: &str, reason: &str, task: TaskMsg, deliveries: u32) {
        let times = match deliveries {
            1 => "once".to_string(),
            n => format!("{n} times"),
        };
        let why = format!(
            "delivered {times}, as often as the pool allows (max_deliveries), and each member \
             that had it left without ending it (the last: {reason}); it is on the dead-letter \
             stream {}",
            self.names.dead_stream()
        );
        tracing::error!(task = task.id, member = gone, "task dead-lettered: {why}");
        let dead = DeadMsg {
            id: task.id,
            deliveries,
            reason: why.clone(),
            payload: task.payload,
        };
        let subject = self.names.dead();
        let msg_id = format!("{:x}-{}-dead", self.run, task.id);
        let deadline = Instant::now() + self.settings.broker_timeout;
        let stored = match self.sealer.pack(&subject, &dead) {
            Ok(bytes) => broker::publish(&self.broker.js, &subject, &msg_id, &bytes, deadline)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let why = match stored {
            Ok(()) => why,
            Err(e) => {
                tracing::error!(task = task.id, "the dead letter was not stored: {e}");
                format!("{why} (not stored: {e})")
            }
        };
        self.lose(task.id, gone, deliveries, why);
    }

    /// What becomes of task `id`, taken back from gone member `gone` after `prior`
    /// deliveries, as the pool's placement decides: if `waiting`, the task waits for a member
    /// and is offered to the members as they change, until the placement gives it up; else it
    /// has just come back. Members all busy are waited for as long as it takes. A task that
    /// moves is counted as delivered `prior` times.
    async fn reroute(&self, id: u64, gone: &str, prior: u32, waiting: bool) -> TakenBack<String> {
        let gone = gone.to_string();
        loop {
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            let until = {
                let mut inner = self.lock();
                let inner = &mut *inner;
                let now = Instant::now();
                let answer = if waiting {
                    inner.placement.place_waiting(id, now)
                } else {
                    inner.placement.take_back(id, &gone, prior, now)
                };
                match answer {
                    TakenBack::To(next) => {
                        if let Some(p) = inner.tasks.get_mut(&id) {
                            p.moved_to(&next, prior);
                        }
                        return TakenBack::To(next);
                    }
                    // Room is what is waited for: a member that ends a task says so (and
                    // looked at again now and then all the same).
                    TakenBack::Busy => Some(now + self.settings.member_timeout()),
                    TakenBack::Waiting if waiting => inner.placement.waits_until(id),
                    other => return other,
                }
            };
            match until {
                Some(until) => {
                    let _ = tokio::time::timeout_at(until.into(), notified).await;
                }
                None => notified.await,
            }
        }
    }
}

/// Tells the broker that a task taken back from `gone` is done with there, and waits until it
/// confirms: the consumer is deleted next, and a task it still counted unacknowledged would
/// stay in the stream for a member joining again under the name.
async fn terminate(message: &JsMessage, gone: &str) {
    if let Err(e) = message.double_ack_with(AckKind::Term).await {
        tracing::warn!(
            member = gone,
            "a task taken back was not confirmed done with by the broker: {e}"
        );
    }
}
