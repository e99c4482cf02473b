//! The loops that serve the pool's subjects and streams.

use super::lease::{Lease, Renewal};
use super::shared::Shared;
use crate::error::Error;
use crate::seal::Unsealed;
use crate::wire::{self, Alive, Beacon, Control, Join, JoinReply, Leave, Names};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) struct Subscriptions {
    pub(super) join: async_nats::Subscriber,
    pub(super) up: async_nats::Subscriber,
    pub(super) alive: async_nats::Subscriber,
    pub(super) leave: async_nats::Subscriber,
}

impl Subscriptions {
    pub(super) async fn open<O>(shared: &Shared<O>) -> Result<Self, Error> {
        let broker = &shared.broker;
        Ok(Self {
            join: broker.subscribe(shared.names.join("*")).await?,
            up: broker.subscribe(shared.names.up("*")).await?,
            alive: broker.subscribe(shared.names.alive("*")).await?,
            leave: broker.subscribe(shared.names.leave("*")).await?,
        })
    }
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
                let mut repeated = false;
                let known = {
                    let mut inner = shared.lock();
                    match inner.live(member) {
                        Some(k) if inner.members[k].nonce == alive.nonce => {
                            let live = &mut inner.members[k];
                            if alive.seq > live.alive_seq {
                                live.alive_seq = alive.seq;
                                live.last_seen = Instant::now();
                            } else {
                                // A member's heartbeats come in order: this one was replayed.
                                repeated = true;
                            }
                            true
                        }
                        _ => false,
                    }
                };
                if repeated {
                    shared
                        .refused
                        .refuse(format_args!("heartbeat {} of member {member}, a second time", alive.seq));
                }
                if !known && !shared.lock().closed() {
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
                    shared.handed_back(&member, &leave.returned);
                    shared.member_gone(&member, leave.reason);
                } else {
                    // A run that left before its join was answered: if that join is read only
                    // now, the run is not taken in (it would be a member nobody serves).
                    tracing::debug!(member, "a leave of a run not in the pool");
                    shared.lock().departed.insert(&member, leave.nonce);
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

/// Checks every member timeout that the pool's streams are there, on a task of its own: a
/// broker slow to answer (one restarting) delays no beacon.
pub(super) async fn watch_streams<O: DeserializeOwned + Send + 'static>(shared: Arc<Shared<O>>) {
    let mut every = tokio::time::interval(shared.settings.member_timeout());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        if shared.broker.conn.is_up() {
            shared.check_streams().await;
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
