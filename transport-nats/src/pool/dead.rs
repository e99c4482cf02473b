//! The dead-letter stream: tasks delivered as often as the pool allows, for the program to
//! read.

use super::Pool;
use crate::broker;
use crate::error::Error;
use crate::wire::{self, DeadMsg};
use async_nats::jetstream::consumer::{pull, AckPolicy};
use futures_util::StreamExt;
use looppool_core::Worker;

/// A task the pool gave up on: delivered [`max_deliveries`](crate::Builder::max_deliveries)
/// times to members that left or died without ending it. Its handle ended with
/// [`TaskError::MemberLost`](crate::TaskError::MemberLost) and the same reason.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter<T> {
    /// The task's id ([`TaskHandle::id`](crate::TaskHandle::id)).
    pub id: u64,
    /// Deliveries to members.
    pub deliveries: u32,
    /// Why it was given up on.
    pub reason: String,
    /// The task.
    pub task: T,
}

impl<W: Worker> Pool<W> {
    /// Takes the tasks on the pool's dead-letter stream, oldest first: each is returned once,
    /// then removed. The stream (`looppool-<pool>-dead`) keeps the latest 10,000 and goes with
    /// the pool's other streams when it stops.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter<W::Task>>, Error> {
        let shared = &self.shared;
        let fail = |e: &dyn std::error::Error| {
            Error::Broker(format!(
                "cannot read the dead-letter stream: {}",
                broker::error_text(e)
            ))
        };
        let config = pull::Config {
            durable_name: Some(format!("program-{:x}", shared.run)),
            ack_policy: AckPolicy::Explicit,
            inactive_threshold: shared.settings.consumer_expiry(),
            ..Default::default()
        };
        let consumer = shared
            .broker
            .js
            .create_consumer_on_stream(config, shared.names.dead_stream())
            .await
            .map_err(|e| fail(&e))?;
        let subject = shared.names.dead();
        let mut letters = Vec::new();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(256)
                .messages()
                .await
                .map_err(|e| fail(&e))?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| fail(&*e))?;
                got += 1;
                match shared.sealer.unpack::<DeadMsg>(&subject, &message.payload) {
                    Ok(dead) => match wire::decode::<W::Task>(&dead.payload) {
                        Ok(task) => letters.push(DeadLetter {
                            id: dead.id,
                            deliveries: dead.deliveries,
                            reason: dead.reason,
                            task,
                        }),
                        Err(e) => tracing::error!(task = dead.id, "undecodable dead letter: {e}"),
                    },
                    Err(e) => shared.refused.refuse(format_args!("a dead letter: {e}")),
                }
                if let Err(e) = message.double_ack().await {
                    // Those taken so far are the program's: return them, not the error.
                    tracing::warn!("a dead letter not acknowledged: {e}");
                    return Ok(letters);
                }
            }
            if got == 0 {
                return Ok(letters);
            }
        }
    }
}
