//! The loops that serve the pool's subjects and streams.

use super::handle::Delivery;
use super::shared::{lock, Shared};
use crate::broker::{self};
use crate::error::Error;
use crate::wire::{self, Control, EndMsg, Join, JoinReply, Leave, Names, OutputMsg};
use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::Message as JsMessage;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub(super) struct Subscriptions {
    pub(super) join: async_nats::Subscriber,
    pub(super) alive: async_nats::Subscriber,
    pub(super) leave: async_nats::Subscriber,
}

impl Subscriptions {
    pub(super) async fn open<O>(shared: &Shared<O>) -> Result<Self, Error> {
        let broker = &shared.broker;
        Ok(Self {
            join: broker.subscribe(shared.names.join()).await?,
            alive: broker.subscribe(shared.names.alive("*")).await?,
            leave: broker.subscribe(shared.names.leave("*")).await?,
        })
    }
}

pub(super) type Messages = pull::Stream;

pub(super) async fn consumer_messages<O>(
    shared: &Shared<O>,
    stream: &str,
) -> Result<Messages, Error> {
    let fail = |e: &dyn std::error::Error| {
        Error::Broker(format!(
            "cannot read stream {stream}: {}",
            broker::error_text(e)
        ))
    };
    let consumer = shared
        .broker
        .js
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some("parent".into()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: shared.settings.ack_wait,
                max_ack_pending: -1,
                ..Default::default()
            },
            stream,
        )
        .await
        .map_err(|e| fail(&e))?;
    broker::read(&consumer, None, &format!("stream {stream}")).await
}

pub(super) async fn serve_joins<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut joins: async_nats::Subscriber,
) {
    while let Some(message) = joins.next().await {
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        let answer = match wire::decode::<Join>(&message.payload) {
            Ok(join) => shared.on_join(join).await,
            Err(e) => JoinReply::Refused {
                reason: format!("undecodable join request (another looppool version?): {e}"),
            },
        };
        // Sent by a task of its own, started before this loop can be stopped: a member the
        // pool counts in always hears so, even if the pool is dropped right after.
        if let Ok(bytes) = wire::encode(&answer) {
            let client = shared.broker.client.clone();
            tokio::spawn(async move {
                let _ = client.publish(reply, bytes.into()).await;
                let _ = client.flush().await;
            });
        }
    }
}

pub(super) async fn serve_members<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut alive: async_nats::Subscriber,
    mut leave: async_nats::Subscriber,
) {
    loop {
        tokio::select! {
            Some(m) = alive.next() => {
                let member = Names::member_of(&m.subject);
                let known = {
                    let mut inner = shared.lock();
                    match inner.live(member) {
                        Some(k) => {
                            inner.members[k].last_seen = Instant::now();
                            true
                        }
                        None => false,
                    }
                };
                if !known && !shared.lock().closed {
                    let reason = "the pool does not count it in (it went silent, or the \
                                  pool restarted)".to_string();
                    shared.control(member, &Control::Evicted { reason }).await;
                }
            }
            Some(m) = leave.next() => {
                let member = Names::member_of(&m.subject).to_string();
                let reason = wire::decode::<Leave>(&m.payload)
                    .map(|l| l.reason)
                    .unwrap_or_else(|e| format!("left (undecodable reason: {e})"));
                shared.member_gone(&member, reason);
            }
            else => return,
        }
    }
}

/// The parent's heartbeat, and the check for silent members.
pub(super) async fn tick<O: DeserializeOwned + Send + 'static>(shared: Arc<Shared<O>>) {
    let mut every = tokio::time::interval(shared.settings.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = shared.settings.member_timeout();
    loop {
        every.tick().await;
        let _ = shared
            .broker
            .client
            .publish(shared.names.beacon(), bytes::Bytes::new())
            .await;
        // Repeat each member's credit, in case one was lost.
        let members: Vec<String> = {
            let inner = shared.lock();
            inner.members.iter().map(|m| m.info.name.clone()).collect()
        };
        for member in members {
            shared.grant(&member).await;
        }
        let conn = &shared.broker.conn;
        if !conn.is_up() {
            continue;
        }
        // Silence while the parent itself was cut off does not count against members.
        let since = conn.since();
        let now = Instant::now();
        let silent: Vec<(String, Duration)> = {
            let inner = shared.lock();
            inner
                .members
                .iter()
                .filter_map(|m| {
                    let quiet = now.duration_since(m.last_seen.max(since));
                    (quiet > timeout).then(|| (m.info.name.clone(), quiet))
                })
                .collect()
        };
        for (member, quiet) in silent {
            shared.member_gone(&member, format!("silent for {quiet:.1?}"));
        }
    }
}

pub(super) async fn read_ends<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut messages: Messages,
) {
    let stream = shared.names.end_stream();
    loop {
        let m = next_message(&shared, &stream, &mut messages).await;
        let member = Names::member_of(&m.subject).to_string();
        match wire::decode::<EndMsg>(&m.payload) {
            Ok(end) => shared.on_end(&member, end),
            Err(e) => tracing::error!(member, "undecodable task end dropped: {e}"),
        }
        let _ = m.ack().await;
    }
}

pub(super) async fn read_outputs<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut messages: Messages,
) {
    let stream = shared.names.out_stream();
    loop {
        let m = next_message(&shared, &stream, &mut messages).await;
        let member = Names::member_of(&m.subject).to_string();
        if m.info().is_ok_and(|i| i.delivered > 1) {
            // Handed out before and still held by the program, whose drop acknowledges it:
            // never hand it out twice.
            continue;
        }
        let output = match wire::decode::<OutputMsg>(&m.payload) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(member, "undecodable output message dropped: {e}");
                let _ = shared.acks.send((member, m));
                continue;
            }
        };
        let task = output.task;
        let value = output
            .payload
            .and_then(|p| wire::decode::<O>(&p).map_err(|e| format!("cannot decode it: {e}")));
        if let Some(id) = task {
            shared.on_output(&member, id, value.as_ref().err());
        }
        match value {
            Ok(value) => {
                let delivery = Delivery {
                    member,
                    task,
                    value: Some(value),
                    message: Some(m),
                    acks: shared.acks.clone(),
                };
                let _ = shared.outputs_tx.send(delivery).await;
            }
            Err(e) => {
                tracing::error!(member, task, "an output was dropped: {e}");
                let _ = shared.acks.send((member, m));
            }
        }
    }
}

/// The next message of the parent's consumer on `stream`; a consumer whose message stream
/// ended (the broker went away) is opened again, retrying until the broker is back.
async fn next_message<O>(shared: &Shared<O>, stream: &str, messages: &mut Messages) -> JsMessage {
    loop {
        match messages.next().await {
            Some(Ok(m)) => return m,
            Some(Err(e)) => tracing::debug!("reading {stream}: {}", broker::error_text(&e)),
            None => loop {
                match consumer_messages(shared, stream).await {
                    Ok(m) => {
                        *messages = m;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("{e}; retrying");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            },
        }
    }
}

/// Acknowledges outputs to the broker as the program drops them, and tells each member how
/// many of its outputs were acknowledged. A count includes only acknowledgements the broker
/// confirmed, so the output is gone from the stream by the time the member stores another in
/// its place.
pub(super) async fn send_acks<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut acks: mpsc::UnboundedReceiver<(String, JsMessage)>,
) {
    let mut batch = Vec::new();
    while acks.recv_many(&mut batch, 256).await > 0 {
        let confirmed =
            futures_util::future::join_all(batch.drain(..).map(|(member, m)| async move {
                confirm_ack(&m).await;
                member
            }))
            .await;
        let mut members: Vec<String> = Vec::new();
        for member in confirmed {
            *lock(&shared.acked).entry(member.clone()).or_default() += 1;
            if !members.contains(&member) {
                members.push(member);
            }
        }
        for member in members {
            shared.grant(&member).await;
        }
    }
}

/// Acknowledges `m` and waits for the broker to confirm, retrying a while (the broker may be
/// restarting).
async fn confirm_ack(m: &JsMessage) {
    let mut backoff = Duration::from_millis(10);
    for _ in 0..12 {
        match m.double_ack().await {
            Ok(()) => return,
            Err(e) => tracing::debug!("output ack not confirmed, retrying: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    tracing::warn!("an output's acknowledgement was never confirmed; counting it all the same");
}
