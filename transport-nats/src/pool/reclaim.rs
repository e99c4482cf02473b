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

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    /// Takes back from gone member `member`'s consumer every task it held: those it had not
    /// received at once, those it had received once the ack wait ran out. Untargeted tasks go
    /// to the next live member with room; targeted and broadcast ones are lost with it.
    pub(super) async fn reclaim(self: &Arc<Self>, member: &str, reason: &str) {
        let held = |shared: &Self| {
            let inner = shared.lock();
            inner.tasks.values().filter(|p| p.member == member).count()
        };
        let s = &self.settings;
        // Counted from the last task taken back: waiting for room on live members is progress.
        let patience = s.ack_wait * 2 + s.member_timeout() + s.broker_timeout;
        let mut deadline = Instant::now() + patience;
        let mut consumer = None;
        loop {
            let remaining = held(self);
            if remaining == 0 {
                return;
            }
            if Instant::now() >= deadline {
                let ids: Vec<u64> = {
                    let inner = self.lock();
                    let tasks = inner.tasks.iter();
                    tasks
                        .filter(|(_, p)| p.member == member)
                        .map(|(id, _)| *id)
                        .collect()
                };
                for id in ids {
                    let why = format!("{reason}; the broker did not give the task back");
                    self.lose(id, member, 0, why);
                }
                return;
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
                        self.reclaimed(member, reason, m).await;
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

    async fn reclaimed(self: &Arc<Self>, gone: &str, reason: &str, message: JsMessage) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let task: TaskMsg = match self.sealer.unpack(&message.subject, &message.payload) {
            Ok(t) => t,
            Err(e) => {
                self.refused.refuse(format_args!(
                    "a task in the consumer of member {gone}, taking it back: {e}"
                ));
                let _ = message.ack_with(AckKind::Term).await;
                return;
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
        match route {
            None => {}
            Some(Route::Member) => self.lose(task.id, gone, prior, reason.into()),
            Some(Route::Any) if prior >= max => self.dead_letter(gone, reason, task, prior).await,
            Some(Route::Any) => match self.reroute(task.id, gone, prior).await {
                Some(next) => {
                    tracing::info!(
                        task = task.id,
                        from = gone,
                        to = %next,
                        deliveries = prior,
                        "task redelivered to another member"
                    );
                    if let Err(e) = self.send_task(task.id, &next, prior, task.payload).await {
                        let why = format!("the broker did not take it: {e}");
                        self.lose(task.id, &next, prior, why);
                    }
                }
                None => {
                    let why = format!("{reason}; no live member was left to take the task");
                    self.lose(task.id, gone, prior, why);
                }
            },
        }
        let _ = message.ack_with(AckKind::Term).await;
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

    /// Moves task `id` from gone member `gone` to the next live member with room in its
    /// backlog, waiting for room as a submission does, and up to the member timeout for a
    /// member to be there at all. Returns the member.
    async fn reroute(&self, id: u64, gone: &str, prior: u32) -> Option<String> {
        let mut deadline = tokio::time::Instant::now() + self.settings.member_timeout();
        loop {
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                let inner = &mut *inner;
                if !matches!(inner.tasks.get(&id), Some(p) if p.member == gone) {
                    return None;
                }
                let n = inner.members.len();
                let roomy = (0..n)
                    .map(|j| (inner.cursor + j) % n)
                    .find(|&k| inner.members[k].outstanding < inner.members[k].limit);
                if let Some(k) = roomy {
                    inner.cursor = k + 1;
                    let live = &mut inner.members[k];
                    live.outstanding += 1;
                    let name = live.info.name.clone();
                    let p = inner.tasks.get_mut(&id).expect("checked above");
                    p.member = name.clone();
                    let mut status = lock(&p.status);
                    status.deliveries = prior;
                    status.member = name.clone();
                    return Some(name);
                }
                if n > 0 {
                    // Members, all busy: wait for room as long as it takes.
                    deadline = tokio::time::Instant::now() + self.settings.member_timeout();
                }
            }
            let busy = tokio::time::Instant::now() < deadline && !self.lock().members.is_empty();
            if busy {
                notified.await;
            } else if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}
