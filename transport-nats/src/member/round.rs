//! One run of a member: it joins with a local pool of its own, serves, and leaves.

use super::join::{join_pool, Joined};
use super::serve::{Ending, Serving, FLUSH};
use super::{host_name, Left, Member};
use crate::broker::Broker;
use crate::error::Error;
use crate::seal::{self, Refusals, Sealer};
use crate::wire::{self, Join, Leave, Names};
use looppool_core::Worker;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

impl<W: Worker> Member<W> {
    /// One run of the member: joins with a local pool of its own, serves, leaves.
    pub(super) async fn round(
        &self,
        round: Round<'_>,
        mut shutdown: std::pin::Pin<&mut futures_util::future::Fuse<impl Future<Output = ()>>>,
    ) -> Result<RoundEnd, Error> {
        let Round {
            member,
            names,
            sealer,
            broker,
            parent,
            mut stopped,
            ..
        } = round;
        let local = self
            .local
            .clone()
            .name(format!("{}-{member}", self.pool))
            .start()
            .await
            .map_err(|e| Error::Local(e.to_string()))?;
        let join = Join {
            version: wire::VERSION,
            worker: W::name().into(),
            member: member.into(),
            host: host_name(),
            pid: std::process::id(),
            capacity: u32::try_from(local.size() * local.capacity()).unwrap_or(u32::MAX),
            workers: u32::try_from(local.size()).unwrap_or(u32::MAX),
            nonce: seal::random_u64(),
            replaces: round.previous,
        };
        let parent_stopped = async {
            match parent {
                Some(run) => {
                    let _ = stopped.wait_for(|runs| runs.contains(&run)).await;
                }
                None => std::future::pending().await,
            }
        };
        let welcome = tokio::select! {
            w = join_pool(broker, names, sealer, &join, self.wait_for_parent) => Some(w),
            () = &mut shutdown => None,
            () = parent_stopped => {
                local.stop().await;
                let left = Left::before_serving(member, "the pool stopped".into());
                return Ok(RoundEnd { left, ending: Ending::Stopped, nonce: join.nonce, parent: None });
            }
        };
        let settings = match welcome {
            Some(Ok(Joined::Welcome(w))) => w,
            Some(Ok(Joined::Anew(reason))) => {
                local.stop().await;
                let left = Left::before_serving(member, reason);
                let ending = Ending::Lost { evicted: None };
                return Ok(RoundEnd {
                    left,
                    ending,
                    nonce: join.nonce,
                    parent: None,
                });
            }
            Some(Err(e)) => {
                local.stop().await;
                return Err(e);
            }
            None => {
                // The parent may have counted this member in already: say it leaves, so that
                // tasks sent to it go elsewhere at once.
                let reason = "shut down before the pool's parent answered".to_string();
                let leave = Leave {
                    nonce: join.nonce,
                    reason: reason.clone(),
                    returned: Vec::new(),
                };
                let subject = names.leave(member);
                if let Ok(bytes) = sealer.pack(&subject, &leave) {
                    let _ = broker.client.publish(subject, bytes.into()).await;
                    let _ = tokio::time::timeout(FLUSH, broker.client.flush()).await;
                }
                local.stop().await;
                let left = Left::before_serving(member, reason);
                return Ok(RoundEnd {
                    left,
                    ending: Ending::Shutdown,
                    nonce: join.nonce,
                    parent: None,
                });
            }
        };
        tracing::info!(pool = %self.pool, member = %member, capacity = join.capacity, "joined the pool");
        let serving = Serving {
            names: names.clone(),
            member: member.into(),
            nonce: join.nonce,
            parent: settings.run,
            sealer: sealer.clone(),
            refusals: Refusals::default(),
            broker: broker.clone(),
            local: Arc::new(local),
            running: Mutex::new(HashMap::new()),
            ids: Mutex::new(HashMap::new()),
            taken: Mutex::new(Default::default()),
            cancels: Mutex::new(Default::default()),
            changed: Notify::new(),
            ended: std::sync::atomic::AtomicU64::new(0),
            resent: std::sync::atomic::AtomicU64::new(0),
        };
        let serving = Arc::new(serving);
        let result = serving
            .serve(shutdown, settings, join.capacity as usize)
            .await;
        serving.local.stop().await;
        result.map(|(left, ending)| RoundEnd {
            left,
            ending,
            nonce: join.nonce,
            parent: Some(settings.run),
        })
    }
}

/// What a run of the member shares with the next.
pub(super) struct Round<'a> {
    pub(super) member: &'a str,
    pub(super) names: &'a Names,
    pub(super) sealer: &'a Sealer,
    pub(super) broker: &'a Broker,
    /// The run before this one, if any.
    pub(super) previous: Option<u64>,
    /// The run of the parent the member served last, if any.
    pub(super) parent: Option<u64>,
    /// Runs of parents that stopped the pool.
    pub(super) stopped: watch::Receiver<Vec<u64>>,
}

/// How a run of the member ended.
pub(super) struct RoundEnd {
    pub(super) left: Left,
    pub(super) ending: Ending,
    /// The member's run.
    pub(super) nonce: u64,
    /// The run of the parent it served, if it joined.
    pub(super) parent: Option<u64>,
}

/// Aborts a task when dropped.
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
