//! Joining, the member's side: asking the pool's parent until it answers, and what the answer
//! says.

use crate::broker::Broker;
use crate::error::Error;
use crate::seal::{Sealer, Unsealed};
use crate::wire::{self, Join, JoinReply, Names};
use std::time::{Duration, Instant};

/// What the parent told a member when it joined.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    /// The parent's run.
    pub(super) run: u64,
    pub(super) ack_wait: Duration,
    pub(super) heartbeat: Duration,
    pub(super) member_timeout: Duration,
    pub(super) broker_timeout: Duration,
    pub(super) result_credit: u64,
}

/// The parent's answer to a join.
pub(super) enum Joined {
    Welcome(Settings),
    /// This run was counted gone before the answer: join again as a new run.
    Anew(String),
}

/// Asks to join until the parent answers.
pub(super) async fn join_pool(
    broker: &Broker,
    names: &Names,
    sealer: &Sealer,
    join: &Join,
    patience: Option<Duration>,
) -> Result<Joined, Error> {
    let asked = Instant::now();
    let subject = names.join(&join.member);
    let request = sealer.pack(&subject, join).map_err(Error::Config)?;
    let reply_context = Names::join_reply(&subject, join.nonce);
    let mut told: Option<Instant> = None;
    loop {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            broker
                .client
                .request(subject.clone(), request.clone().into()),
        )
        .await;
        // Why the member asks again, and whether that is alarming.
        let (why, alarming) = match answer {
            Ok(Ok(reply)) => match sealer.unpack::<JoinReply>(&reply_context, &reply.payload) {
                Ok(JoinReply::Welcome {
                    run,
                    ack_wait_ms,
                    heartbeat_ms,
                    member_timeout_ms,
                    broker_timeout_ms,
                    result_credit,
                }) => {
                    return Ok(Joined::Welcome(Settings {
                        run,
                        ack_wait: Duration::from_millis(ack_wait_ms),
                        heartbeat: Duration::from_millis(heartbeat_ms),
                        member_timeout: Duration::from_millis(member_timeout_ms),
                        broker_timeout: Duration::from_millis(broker_timeout_ms),
                        result_credit: u64::from(result_credit.max(1)),
                    }))
                }
                Ok(JoinReply::Refused {
                    reason,
                    retry: true,
                }) => (Some(reason), false),
                Ok(JoinReply::Refused { reason, .. }) => return Err(Error::Refused(reason)),
                Ok(JoinReply::Anew { reason }) => return Ok(Joined::Anew(reason)),
                Err(Unsealed::Forged) => {
                    // The parent answers a join it cannot open unsealed: it may hold another
                    // secret. Anyone could answer so, though: ask on, telling why.
                    let reason = match wire::decode::<JoinReply>(&reply.payload) {
                        Ok(JoinReply::Refused { reason, .. }) => format!(
                            "{reason} (an answer not sealed with this member's secret: do the \
                             parent and this member hold the same one?)"
                        ),
                        _ => "the answer to the join request is not sealed with this member's \
                              secret"
                            .into(),
                    };
                    (Some(reason), true)
                }
                Err(e) => {
                    return Err(Error::Refused(format!(
                        "undecodable answer from the pool's parent (another looppool version?): {e}"
                    )))
                }
            },
            // No answer.
            Ok(Err(_)) | Err(_) => (None, false),
        };
        if let Some(patience) = patience.filter(|p| asked.elapsed() >= *p) {
            return Err(Error::Timeout(match &why {
                Some(reason) => format!("not taken in for {patience:?}: {reason}"),
                None => format!(
                    "the parent of pool {} did not answer for {patience:?}",
                    names.pool()
                ),
            }));
        }
        if told.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            match &why {
                Some(reason) if alarming => tracing::error!("asking to join again: {reason}"),
                Some(reason) => tracing::info!("asking to join again: {reason}"),
                None => tracing::info!("waiting for the parent of pool {} to answer", names.pool()),
            }
            told = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
