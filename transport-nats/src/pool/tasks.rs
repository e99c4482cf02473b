//! The loops that serve the pool's subjects and streams.

use super::handle::Delivery;
use super::lease::{Lease, Renewal};
use super::shared::{lock, Ack, Shared};
use crate::broker::{self};
use crate::error::Error;
use crate::seal::Unsealed;
use crate::wire::{self, Alive, Beacon, Control, EndMsg, Join, JoinReply, Leave, Names, OutputMsg};
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
            join: broker.subscribe(shared.names.join("*")).await?,
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
    // Of this run: a parent that lost the pool never reads its successor's.
    let name = format!("parent-{:x}", shared.run);
    let config = pull::Config {
        durable_name: Some(name.clone()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: shared.settings.ack_wait,
        max_ack_pending: -1,
        inactive_threshold: shared.settings.consumer_expiry(),
        ..Default::default()
    };
    let js = &shared.broker.js;
    let consumer = match js.create_consumer_on_stream(config.clone(), stream).await {
        Ok(c) => c,
        Err(e) if broker::error_text(&e).contains("multiple non-filtered consumers") => {
            // An earlier parent's, made anew on this parent's streams before it learnt it
            // lost the pool: this parent holds the lease, the stream is its to read.
            let mut stale = Vec::new();
            if let Ok(s) = js.get_stream(stream).await {
                let mut names = s.consumer_names();
                while let Some(Ok(other)) = names.next().await {
                    if other != name {
                        stale.push(other);
                    }
                }
            }
            for other in stale {
                tracing::warn!("deleting consumer {other} of an earlier parent on {stream}");
                let _ = js.delete_consumer_from_stream(&other, stream).await;
            }
            js.create_consumer_on_stream(config, stream)
                .await
                .map_err(|e| fail(&e))?
        }
        Err(e) => return Err(fail(&e)),
    };
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
        let subject = message.subject.to_string();
        let (answer, nonce) = match shared.sealer.unpack::<Join>(&subject, &message.payload) {
            Ok(join) if join.member != Names::member_of(&subject) => {
                shared.refused.refuse(format_args!(
                    "a join as member {} on {subject}",
                    join.member
                ));
                let reason = "a member joins on its own subject".into();
                (
                    JoinReply::Refused {
                        reason,
                        retry: false,
                    },
                    Some(join.nonce),
                )
            }
            Ok(join) => {
                let nonce = join.nonce;
                (shared.on_join(join).await, Some(nonce))
            }
            Err(Unsealed::Forged) => {
                shared
                    .refused
                    .refuse(format_args!("a join request: {}", Unsealed::Forged));
                let reason = "the join request is not sealed with this pool's secret".into();
                let retry = false;
                (JoinReply::Refused { reason, retry }, None)
            }
            Err(e) => {
                let reason = format!("the join request is {e} (another looppool version?)");
                let retry = false;
                (JoinReply::Refused { reason, retry }, None)
            }
        };
        // Sealed for that join, unless the parent could not read it (the member then cannot
        // tell this refusal from a forged one, and says so).
        let bytes = match nonce {
            Some(nonce) => shared
                .sealer
                .pack(&Names::join_reply(&subject, nonce), &answer),
            None => wire::encode(&answer),
        };
        // Sent by a task of its own, started before this loop can be stopped: a member the
        // pool counts in always hears so, even if the pool is dropped right after.
        if let Ok(bytes) = bytes {
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
                let alive = match shared.sealer.unpack::<Alive>(&m.subject, &m.payload) {
                    Ok(a) if a.run == shared.run => a,
                    Ok(_) => {
                        tracing::debug!(member, "a heartbeat for another parent ignored");
                        continue;
                    }
                    Err(e) => {
                        shared.refused.refuse(format_args!("a heartbeat of member {member}: {e}"));
                        continue;
                    }
                };
                let known = {
                    let mut inner = shared.lock();
                    match inner.live(member) {
                        Some(k) if inner.members[k].nonce == alive.nonce => {
                            let live = &mut inner.members[k];
                            if alive.seq > live.alive_seq {
                                live.alive_seq = alive.seq;
                                live.last_seen = Instant::now();
                            }
                            true
                        }
                        _ => false,
                    }
                };
                if !known && !shared.lock().closed {
                    let reason = "the pool does not count it in (it went silent, or the \
                                  pool restarted)".to_string();
                    shared.control(member, alive.nonce, Control::Evicted { reason }).await;
                }
            }
            Some(m) = leave.next() => {
                let member = Names::member_of(&m.subject).to_string();
                let leave = match shared.sealer.unpack::<Leave>(&m.subject, &m.payload) {
                    Ok(l) => l,
                    Err(e) => {
                        shared.refused.refuse(format_args!("a leave of member {member}: {e}"));
                        continue;
                    }
                };
                let current = {
                    let inner = shared.lock();
                    inner.live(&member).is_some_and(|k| inner.members[k].nonce == leave.nonce)
                };
                if current {
                    shared.member_gone(&member, leave.reason);
                } else {
                    tracing::debug!(member, "a leave of a run not in the pool ignored");
                }
            }
            else => return,
        }
    }
}

/// Renews the parent's lease every heartbeat, on a task of its own: a slow answer delays no
/// beacon. Fails the pool once another parent took it over.
pub(super) async fn keep_lease<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut lease: Lease,
) {
    let mut every = tokio::time::interval(shared.settings.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let patience = shared.settings.lease_time();
    loop {
        every.tick().await;
        // Not while cut off: the answer could not come.
        if !shared.broker.conn.is_up() {
            continue;
        }
        match tokio::time::timeout(patience, lease.renew()).await {
            Ok(Ok(())) => {}
            Ok(Err(Renewal::Lost(holder))) => {
                shared.fail(format!("{holder} took the pool over"));
                shared.abort_background();
                return;
            }
            Ok(Err(Renewal::Unanswered(e))) => tracing::warn!("lease not renewed: {e}"),
            Err(_) => tracing::warn!("lease not renewed: no answer within {patience:?}"),
        }
    }
}

/// The parent's heartbeat, and the check for silent members.
pub(super) async fn tick<O: DeserializeOwned + Send + 'static>(shared: Arc<Shared<O>>) {
    let mut every = tokio::time::interval(shared.settings.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = shared.settings.member_timeout();
    let subject = shared.names.beacon();
    let mut seq = 0;
    let mut last_check = Instant::now();
    loop {
        every.tick().await;
        // Cut off: nothing to send (a publish would only fill the client's buffer).
        let conn = &shared.broker.conn;
        if !conn.is_up() {
            let cut_off = conn.since().elapsed();
            if cut_off > shared.settings.broker_timeout {
                shared.broker_gone(format!("unreachable for {cut_off:.1?}"));
            }
            continue;
        }
        shared.broker_back();
        seq += 1;
        let beacon = Beacon {
            run: shared.run,
            seq,
        };
        if let Ok(bytes) = shared.sealer.pack(&subject, &beacon) {
            let _ = shared
                .broker
                .client
                .publish(subject.clone(), bytes.into())
                .await;
        }
        // Repeat each member's credit, in case one was lost.
        let members: Vec<String> = {
            let inner = shared.lock();
            inner.members.iter().map(|m| m.info.name.clone()).collect()
        };
        for member in members {
            shared.grant(&member).await;
        }
        if last_check.elapsed() >= timeout {
            last_check = Instant::now();
            shared.check_streams().await;
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
        let refused = match shared.sealer.unpack::<EndMsg>(&m.subject, &m.payload) {
            Ok(end) => shared.on_end(&member, end).err(),
            Err(e) => Some(format!("a task end on {}: {e}", m.subject)),
        };
        if let Some(why) = refused {
            shared.refused.refuse(format_args!("{why}"));
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
        let output = match shared.sealer.unpack::<OutputMsg>(&m.subject, &m.payload) {
            Ok(o) => o,
            Err(e) => {
                shared
                    .refused
                    .refuse(format_args!("an output on {}: {e}", m.subject));
                // Not one of the member's outputs: its credit does not change.
                let _ = m.ack().await;
                continue;
            }
        };
        let task = output.task;
        let value = output
            .payload
            .as_ref()
            .map_err(String::clone)
            .and_then(|p| wire::decode::<O>(p).map_err(|e| format!("cannot decode it: {e}")));
        if let Err((why, counted)) = shared.on_output(&member, &output, value.as_ref().err()) {
            shared.refused.refuse(format_args!("{why}"));
            if counted {
                // One of the member's outputs all the same: acknowledged, it returns credit.
                let _ = shared.acks.send((member, output.nonce, m));
            } else {
                let _ = m.ack().await;
            }
            continue;
        }
        match value {
            Ok(value) => {
                let delivery = Delivery {
                    member,
                    nonce: output.nonce,
                    task,
                    value: Some(value),
                    message: Some(m),
                    acks: shared.acks.clone(),
                };
                let _ = shared.outputs_tx.send(delivery).await;
            }
            Err(e) => {
                tracing::error!(member, task, "an output was dropped: {e}");
                let _ = shared.acks.send((member, output.nonce, m));
            }
        }
    }
}

/// The next message of the parent's consumer on `stream`. A consumer whose message stream
/// failed or ended (the broker went away, or lost the consumer) is opened again, made anew if
/// it is gone, retrying until the broker is back; a stream found gone is reported.
async fn next_message<O: DeserializeOwned + Send + 'static>(
    shared: &Shared<O>,
    stream: &str,
    messages: &mut Messages,
) -> JsMessage {
    loop {
        match messages.next().await {
            Some(Ok(m)) => return m,
            Some(Err(e)) => tracing::debug!("reading {stream}: {}", broker::error_text(&e)),
            None => tracing::debug!("reading {stream}: the message stream ended"),
        }
        loop {
            match consumer_messages(shared, stream).await {
                Ok(m) => {
                    *messages = m;
                    break;
                }
                Err(e) => {
                    if e.to_string().contains("stream not found") {
                        shared.streams_lost(format!("stream {stream} is gone"));
                    } else {
                        tracing::warn!("{e}; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
}

/// Acknowledges outputs to the broker as the program drops them, and tells each member how
/// many of its outputs were acknowledged. A count includes only acknowledgements the broker
/// confirmed, so the output is gone from the stream by the time the member stores another in
/// its place.
pub(super) async fn send_acks<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut acks: mpsc::UnboundedReceiver<Ack>,
) {
    let mut batch = Vec::new();
    while acks.recv_many(&mut batch, 256).await > 0 {
        let confirmed =
            futures_util::future::join_all(batch.drain(..).map(|(member, nonce, m)| async move {
                confirm_ack(&m).await;
                (member, nonce)
            }))
            .await;
        let mut members: Vec<String> = Vec::new();
        for (member, nonce) in confirmed {
            // Counted for the run that stored it only: a run that joined since counts anew.
            match lock(&shared.acked).get_mut(&member) {
                Some((run, count)) if *run == nonce => *count += 1,
                _ => continue,
            }
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
