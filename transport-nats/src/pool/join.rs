//! Membership, the parent's side: welcoming a member (its consumer, the sticky broadcasts it
//! must get first) and letting one go (taking back what it held).

use super::handle::{MemberEvent, MemberInfo};
use super::inner::Live;
use super::sessions::Session;
use super::shared::{lock, Shared};
use crate::broker;
use crate::wire::{self, Join, JoinReply};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    pub(super) async fn on_join(self: &Arc<Self>, join: Join) -> JoinReply {
        let refuse = |reason: String| {
            tracing::warn!(member = %join.member, host = %join.host, "join refused: {reason}");
            JoinReply::Refused {
                reason,
                retry: false,
            }
        };
        let later = |reason: String| {
            tracing::info!(member = %join.member, host = %join.host, "join deferred: {reason}");
            JoinReply::Refused {
                reason,
                retry: true,
            }
        };
        if join.version != wire::VERSION {
            return refuse(format!(
                "protocol version {} is not this pool's {}",
                join.version,
                wire::VERSION
            ));
        }
        if join.worker != self.worker {
            return refuse(format!(
                "the member runs worker {:?}; this pool runs {:?}",
                join.worker, self.worker
            ));
        }
        if !wire::valid_name(&join.member) {
            return refuse(format!("member name {:?} is not usable", join.member));
        }
        if join.capacity == 0 {
            return refuse("capacity 0".into());
        }
        let replaced = {
            let inner = self.lock();
            if inner.closed() {
                // A member joining again hears of the stop (`looppool.P.stopped`) meanwhile.
                return later("the pool is stopping".into());
            }
            if inner.departed.contains(&join.member, join.nonce) {
                // Its join was answered late, or sent again after it was counted gone: the
                // member, if it still runs, joins again as a new run.
                let reason = format!("this run of member {} left the pool", join.member);
                tracing::info!(member = %join.member, "join of a departed run: {reason}");
                return JoinReply::Anew { reason };
            }
            match inner.live(&join.member).map(|k| &inner.members[k]) {
                // The member asked again: the first answer was late or lost.
                Some(old) if old.nonce == join.nonce => return self.welcome(),
                Some(old) if join.replaces == Some(old.nonce) => {
                    Some("it joined again as a new run".to_string())
                }
                Some(old) if old.last_seen.elapsed() > self.settings.replace_after() => {
                    let quiet = old.last_seen.elapsed();
                    Some(format!(
                        "silent for {quiet:.1?}, and a new run of it asked to join"
                    ))
                }
                Some(_) => {
                    return later(format!(
                        "member name {} is in use by a live run; a new run is taken in once \
                         that one leaves or falls silent",
                        join.member
                    ))
                }
                None => None,
            }
        };
        if let Some(why) = replaced {
            self.member_gone(&join.member, why);
        }
        if self.lock().recovering {
            return later("the broker lost the pool's streams; they are being made anew".into());
        }
        if self.lock().reclaiming.contains(&join.member) {
            return later(format!(
                "member {}'s earlier run left; its consumer goes once its tasks are taken back \
                 (at most the ack wait)",
                join.member
            ));
        }
        let config = self.member_consumer(&join.member, i64::from(join.capacity));
        if let Err(e) = self
            .broker
            .js
            .create_consumer_on_stream(config, self.names.tasks_stream())
            .await
        {
            // The broker may be making the pool's streams anew: worth asking again.
            return later(format!(
                "cannot create its consumer yet: {}",
                broker::error_text(&e)
            ));
        }
        let info = MemberInfo {
            name: join.member.clone(),
            host: join.host.clone(),
            pid: join.pid,
            capacity: join.capacity as usize,
            workers: join.workers as usize,
        };
        // Sticky broadcasts first, stored before any other task for the member: it is routable
        // only once none is left unsent (one set meanwhile is sent in another round).
        let mut sent = HashSet::new();
        let mut recorded = Vec::new();
        loop {
            let todo = {
                let mut inner = self.lock();
                if inner.live(&info.name).is_some() {
                    // Another run of the name was taken in meanwhile: what was recorded for
                    // this one is forgotten (copies stored already reach that run).
                    for id in recorded {
                        inner.withdraw(id);
                    }
                    return later(format!("member name {} is in use by a live run", info.name));
                }
                if inner.closed() && sent.is_empty() {
                    return refuse("the pool is stopping".into());
                }
                if inner.departed.contains(&join.member, join.nonce) && sent.is_empty() {
                    // It left while its consumer was being made.
                    let reason = format!("this run of member {} left the pool", join.member);
                    return JoinReply::Anew { reason };
                }
                let todo: Vec<(u64, Vec<u8>)> = inner
                    .sticky
                    .iter()
                    .filter(|s| !sent.contains(&s.set))
                    .map(|s| (s.set, s.payload.clone()))
                    .collect();
                if todo.is_empty() {
                    inner
                        .sessions
                        .insert(info.name.clone(), Session::new(join.nonce));
                    // Its credit counts from nothing.
                    lock(&self.acked).insert(info.name.clone(), (join.nonce, 0));
                    let limit = self.settings.backlog.unwrap_or(info.capacity);
                    inner.placement.join(info.name.clone(), limit);
                    inner.members.push(Live {
                        info: info.clone(),
                        nonce: join.nonce,
                        last_seen: Instant::now(),
                        alive_seq: 0,
                    });
                    break;
                }
                todo.into_iter()
                    .map(|(set, payload)| {
                        let id = inner.record(&info.name);
                        recorded.push(id);
                        (set, id, payload)
                    })
                    .collect::<Vec<_>>()
            };
            for (set, id, payload) in todo {
                sent.insert(set);
                if let Err(e) = self.send_task(id, &info.name, 0, payload).await {
                    let why = format!("the broker did not take it: {e}");
                    self.lose(id, &info.name, 0, why);
                }
            }
        }
        tracing::info!(member = %info.name, host = %info.host, capacity = info.capacity, "member joined");
        let _ = self.events.send(MemberEvent::Joined(info));
        self.changed.notify_waiters();
        self.welcome()
    }

    /// The configuration of `member`'s consumer, holding at most `capacity` unacknowledged
    /// tasks (-1: no limit).
    pub(super) fn member_consumer(&self, member: &str, capacity: i64) -> pull::Config {
        pull::Config {
            durable_name: Some(member.into()),
            filter_subject: self.names.task(member),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            max_ack_pending: capacity,
            deliver_policy: DeliverPolicy::All,
            max_deliver: -1,
            inactive_threshold: self.settings.consumer_expiry(),
            ..Default::default()
        }
    }

    fn welcome(&self) -> JoinReply {
        JoinReply::Welcome {
            run: self.run,
            ack_wait_ms: Self::ms(self.settings.ack_wait),
            heartbeat_ms: Self::ms(self.settings.heartbeat),
            member_timeout_ms: Self::ms(self.settings.member_timeout()),
            broker_timeout_ms: Self::ms(self.settings.broker_timeout),
            result_credit: u32::try_from(self.settings.result_credit).unwrap_or(u32::MAX),
        }
    }

    /// Member `member` is gone: route nothing more to it, take back what it held.
    pub(super) fn member_gone(self: &Arc<Self>, member: &str, reason: String) {
        let held = {
            let mut inner = self.lock();
            let Some(k) = inner.live(member) else {
                return;
            };
            let gone = inner.members.remove(k);
            inner.departed.insert(member, gone.nonce);
            // Until its consumer is deleted: a new run of the member waits for that.
            inner.reclaiming.insert(member.into());
            inner.placement.leave(&member.to_string())
        };
        tracing::info!(member, "member left: {reason}");
        let _ = self.events.send(MemberEvent::Left {
            member: member.into(),
            reason: reason.clone(),
        });
        self.changed.notify_waiters();
        let shared = self.clone();
        let member = member.to_string();
        self.spawn(async move {
            let waiting = if held {
                shared.reclaim(&member, &reason).await
            } else {
                Vec::new()
            };
            let _ = shared
                .broker
                .js
                .delete_consumer_from_stream(&member, shared.names.tasks_stream())
                .await;
            shared.lock().reclaiming.remove(&member);
            shared.changed.notify_waiters();
            // Now that a new run of the member may join, it may take them too.
            shared.place_waiting(&member, &reason, waiting).await;
        });
    }
}
