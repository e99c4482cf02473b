//! Stopping a pool: drain, tell the members to leave, remove the pool's streams and lease.

use super::{broker, lease, Pool, Stopped};
use crate::wire::{Control, PoolStopped};
use looppool_core::Worker;
use std::pin::pin;

impl<W: Worker> Pool<W> {
    /// Stops the pool gracefully: refuses new submissions, waits until every accepted task
    /// ended and its outputs were received, tells every member to leave and waits for them
    /// (up to the stop timeout), then deletes the pool's streams. Outputs already received
    /// stay readable from [`outputs`](Self::outputs).
    pub async fn stop(&self) -> Stopped {
        let shared = &self.shared;
        shared.lock().placement.close();
        shared.changed.notify_waiters();
        loop {
            let mut notified = pin!(shared.changed.notified());
            notified.as_mut().enable();
            {
                let inner = shared.lock();
                if inner.tasks.is_empty() && inner.reclaiming.is_empty() {
                    break;
                }
            }
            notified.await;
        }
        let failed = shared.lock().failed.clone();
        if let Some(why) = failed {
            // Another parent runs the pool now: its members and streams are not this one's.
            shared.abort_background();
            shared.outputs_tx.close();
            tracing::warn!(pool = %shared.pool, "pool stopped after it failed: {why}");
            let unresponsive = self.members().into_iter().map(|m| m.name).collect();
            return Stopped {
                left: Vec::new(),
                unresponsive,
            };
        }
        let members: Vec<(String, u64)> = {
            let inner = shared.lock();
            let members = inner.members.iter();
            members.map(|m| (m.info.name.clone(), m.nonce)).collect()
        };
        let members: Vec<String> = members.into_iter().map(|(m, _)| m).collect();
        let deadline = tokio::time::Instant::now() + shared.settings.stop_timeout;
        // Told again every heartbeat: a member that had just joined may not have been
        // listening yet.
        let mut tell = tokio::time::interval(shared.settings.heartbeat);
        loop {
            let mut notified = pin!(shared.changed.notified());
            notified.as_mut().enable();
            let left: Vec<(String, u64)> = {
                let inner = shared.lock();
                let members = inner.members.iter();
                members.map(|m| (m.info.name.clone(), m.nonce)).collect()
            };
            if left.is_empty() {
                break;
            }
            tokio::select! {
                _ = tell.tick() => {
                    for (m, nonce) in &left {
                        shared.control(m, *nonce, Control::Stop).await;
                    }
                }
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let unresponsive: Vec<String> = self.members().into_iter().map(|m| m.name).collect();
        let left = members
            .into_iter()
            .filter(|m| !unresponsive.contains(m))
            .collect();
        shared.abort_background();
        // The pool may have been taken over meanwhile (this parent was cut off that long): its
        // streams and lease are then another parent's.
        let ours = match lease::holder(&shared.broker, &shared.names).await {
            Ok(Some((run, _))) => run == shared.run,
            Ok(None) => true,
            Err(_) => false,
        };
        let failed = shared.lock().failed.clone();
        if !ours || failed.is_some() {
            shared.outputs_tx.close();
            tracing::warn!(pool = %shared.pool, "pool stopped; another parent holds it now");
            return Stopped { left, unresponsive };
        }
        // Members joining again, which the pool no longer counts in, hear it too.
        let subject = shared.names.stopped();
        if let Ok(bytes) = shared
            .sealer
            .pack(&subject, &PoolStopped { run: shared.run })
        {
            let _ = shared.broker.client.publish(subject, bytes.into()).await;
        }
        let js = &shared.broker.js;
        let tidy = async {
            for name in shared.names.streams() {
                if let Err(e) = js.delete_stream(&name).await {
                    tracing::warn!("cannot delete stream {name}: {}", broker::error_text(&e));
                }
            }
            // Last: a parent may start this pool again at once.
            let bucket = shared.names.lease_bucket();
            if let Err(e) = js.delete_key_value(&bucket).await {
                tracing::warn!("cannot delete bucket {bucket}: {}", broker::error_text(&e));
            }
        };
        // Bounded: a broker out of reach keeps them, and the next parent replaces them.
        if tokio::time::timeout(shared.settings.broker_timeout, tidy)
            .await
            .is_err()
        {
            tracing::warn!("the broker did not answer: the pool's streams and lease stay");
        }
        shared.outputs_tx.close();
        tracing::info!(pool = %shared.pool, ?left, ?unresponsive, "pool stopped");
        Stopped { left, unresponsive }
    }
}
