//! Taking back a gone member's tasks: rerouting the untargeted ones, losing the rest, and
//! dead-lettering a task delivered as often as the pool allows.

use super::shared::{lock, Route, Shared};
use crate::broker;
use crate::wire::{DeadMsg, TaskMsg};
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message as JsMessage};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A task taken out of a gone member's consumer that no live member had room for yet.
pub(super) struct Leftover {
    id: u64,
    prior: u32,
    payload: Vec<u8>,
}

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    /// Takes back from gone member `member`'s consumer every task it held: those it had not
    /// received at once, those it had received once the ack wait ran out (at once too if the
    /// member said that run is over, see [`Shared::hurry`]). Untargeted tasks go to the next
    /// live member with room, or are returned to be moved once the consumer is gone (a member
    /// joining again under the name may take them); targeted and broadcast ones are lost.
    pub(super) async fn reclaim(self: &Arc<Self>, member: &str, reason: &str) -> Vec<Leftover> {
        let mut leftover: Vec<Leftover> = Vec::new();
        let held = |shared: &Self, leftover: &[Leftover]| {
            let inner = shared.lock();
            let tasks = inner.tasks.iter();
            tasks
                .filter(|(id, p)| p.member == member && !leftover.iter().any(|l| l.id == **id))
                .count()
        };
        let s = &self.settings;
        // Counted from the last task taken back.
        let patience = s.ack_wait * 2 + s.member_timeout() + s.broker_timeout;
        let mut deadline = Instant::now() + patience;
        let mut consumer = None;
        let mut hurried = false;
        loop {
            let remaining = held(self, &leftover);
            if remaining == 0 {
                return leftover;
            }
            if Instant::now() >= deadline {
                let ids: Vec<u64> = {
                    let inner = self.lock();
                    let tasks = inner.tasks.iter();
                    tasks
                        .filter(|(id, p)| {
                            p.member == member && !leftover.iter().any(|l| l.id == **id)
                        })
                        .map(|(id, _)| *id)
                        .collect()
                };
                for id in ids {
                    let why = format!("{reason}; the broker did not give the task back");
                    self.lose(id, member, 0, why);
                }
                return leftover;
            }
            if !hurried && self.lock().hurry.contains(member) {
                // The run is over for sure: what it received comes back without the ack wait.
                hurried = true;
                consumer = None;
            }
            if consumer.is_none() {
                match self.unblock(member, hurried).await {
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
                        leftover.extend(self.reclaimed(member, reason, m).await);
                        deadline = Instant::now() + patience;
                    }
                    Err(e) => tracing::debug!(member, "reclaim: {e}"),
                }
            }
        }
    }

    /// The consumer to take the gone member's tasks from: its own with no limit on
    /// unacknowledged tasks (those it held no longer keep the parent from the ones never
    /// delivered), or, `hurried`, a new one in its place, to which the broker gives every task
    /// at once.
    async fn unblock(&self, member: &str, hurried: bool) -> Result<PullConsumer, String> {
        let stream = self.names.tasks_stream();
        let js = &self.broker.js;
        let text = |e: &dyn std::error::Error| broker::error_text(e);
        if !hurried {
            return js
                .update_consumer_on_stream(self.member_consumer(member, -1), &stream)
                .await
                .map_err(|e| text(&e));
        }
        let _ = js.delete_consumer_from_stream(member, &stream).await;
        let mut config = self.member_consumer(member, -1);
        config.durable_name = Some(Self::reclaimer(member));
        js.create_consumer_on_stream(config, &stream)
            .await
            .map_err(|e| text(&e))
    }

    /// The name of the consumer that takes a gone member's tasks at once.
    pub(super) fn reclaimer(member: &str) -> String {
        format!("reclaim-{member}")
    }

    /// Moves tasks taken back from gone member `gone` that had no room before: to the next
    /// live member with room, waiting as a submission does (a run of the member joining again
    /// may take them).
    pub(super) async fn place_leftovers(&self, gone: &str, reason: &str, leftover: Vec<Leftover>) {
        for Leftover { id, prior, payload } in leftover {
            match self.reroute(id, gone, prior).await {
                Some(next) => self.resend(id, gone, &next, prior, payload).await,
                None => {
                    let why = format!("{reason}; no live member was left to take the task");
                    self.lose(id, gone, prior, why);
                }
            }
        }
    }

    async fn resend(&self, id: u64, gone: &str, next: &str, prior: u32, payload: Vec<u8>) {
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

    async fn reclaimed(
        self: &Arc<Self>,
        gone: &str,
        reason: &str,
        message: JsMessage,
    ) -> Option<Leftover> {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let task: TaskMsg = match self.sealer.unpack(&message.subject, &message.payload) {
            Ok(t) => t,
            Err(e) => {
                self.refused.refuse(format_args!(
                    "a task in the consumer of member {gone}, taking it back: {e}"
                ));
                let _ = message.ack_with(AckKind::Term).await;
                return None;
            }
        };
        // Deliveries to members so far: all but this one, which came to the parent.
        let prior = task.prior + u32::try_from(delivered.max(1) - 1).unwrap_or(u32::MAX);
        let route = {
            let inner = self.lock();
            match inner.tasks.get(&task.id) {
                Some(p) if p.member == gone => Some(p.route),
                _ => None,
            }
        };
        let max = self.settings.max_deliveries;
        let mut left = None;
        match route {
            None => {}
            Some(Route::Member) => self.lose(task.id, gone, prior, reason.into()),
            Some(Route::Any) if prior >= max => self.dead_letter(gone, reason, task, prior).await,
            Some(Route::Any) => match self.place(task.id, gone, prior) {
                Some(next) => self.resend(task.id, gone, &next, prior, task.payload).await,
                None => {
                    if let Some(p) = self.lock().tasks.get_mut(&task.id) {
                        p.adrift = true;
                    }
                    left = Some(Leftover {
                        id: task.id,
                        prior,
                        payload: task.payload,
                    })
                }
            },
        }
        let _ = message.ack_with(AckKind::Term).await;
        left
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
            Ok(bytes) => {
                broker::publish(&self.broker.js, &subject, &msg_id, &bytes, Some(deadline))
                    .await
                    .map_err(|e| e.to_string())
            }
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

    /// Moves task `id` from gone member `gone` to the next live member with room in its
    /// backlog, if one has room now. Returns the member.
    fn place(&self, id: u64, gone: &str, prior: u32) -> Option<String> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        if !matches!(inner.tasks.get(&id), Some(p) if p.member == gone) {
            return None;
        }
        let n = inner.members.len();
        let k = (0..n)
            .map(|j| (inner.cursor + j) % n)
            .find(|&k| inner.members[k].outstanding < inner.members[k].limit)?;
        inner.cursor = k + 1;
        let live = &mut inner.members[k];
        live.outstanding += 1;
        let name = live.info.name.clone();
        let p = inner.tasks.get_mut(&id).expect("checked above");
        p.member = name.clone();
        p.adrift = false;
        let mut status = lock(&p.status);
        status.deliveries = prior;
        status.member = name.clone();
        Some(name)
    }

    /// [`place`](Self::place), waiting for room as a submission does, and up to the member
    /// timeout for a member to be there at all.
    async fn reroute(&self, id: u64, gone: &str, prior: u32) -> Option<String> {
        let mut deadline = tokio::time::Instant::now() + self.settings.member_timeout();
        loop {
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            if let Some(name) = self.place(id, gone, prior) {
                return Some(name);
            }
            if !matches!(self.lock().tasks.get(&id), Some(p) if p.member == gone) {
                return None;
            }
            if !self.lock().members.is_empty() {
                // Members, all busy: wait for room as long as it takes.
                deadline = tokio::time::Instant::now() + self.settings.member_timeout();
                notified.await;
            } else if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}
