//! When the broker loses the pool's streams (its store was lost, or someone deleted one): the
//! tasks under way end with a broker error, the members are let go (their consumers are gone;
//! they join again), and the streams are made anew.

use super::builder::create_streams;
use super::lease;
use super::shared::Shared;
use crate::broker;
use async_nats::jetstream::context::GetStreamErrorKind;
use looppool_core::TaskError;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    /// Asks the broker whether each of the pool's streams is there (a broker that lost its
    /// store, or a stream someone deleted, shows here even when nothing is sent meanwhile).
    pub(super) async fn check_streams(&self) {
        for stream in self.names.streams() {
            if let Err(e) = self.broker.js.get_stream(&stream).await {
                if matches!(e.kind(), GetStreamErrorKind::JetStream(_))
                    && broker::error_text(&e).contains("stream not found")
                {
                    self.streams_lost(format!("stream {stream} is gone"));
                    return;
                }
            }
        }
    }

    /// Reports that one of the pool's streams is gone; [`recovery`] takes it from there.
    pub(super) fn streams_lost(&self, what: String) {
        let _ = self.lost.send(what);
    }
}

/// Makes the pool whole again each time a stream of it is found gone.
pub(super) async fn recovery<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut lost: mpsc::UnboundedReceiver<String>,
) {
    while let Some(what) = lost.recv().await {
        // One recovery answers every report made meanwhile.
        while lost.try_recv().is_ok() {}
        // Streams made anew by a parent that took the pool over are not this one's to touch.
        match lease::holder(&shared.broker, &shared.names).await {
            Ok(Some((run, holder))) if run != shared.run => {
                shared.fail(format!("{holder} took the pool over"));
                shared.abort_background();
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot read the pool's lease: {e}"),
        }
        let reason = format!("the broker lost the pool's streams ({what})");
        tracing::error!(pool = %shared.pool, "{reason}: tasks under way fail; making them anew");
        let members: Vec<String> = {
            let mut inner = shared.lock();
            inner.recovering = true;
            inner.end_all(|_| TaskError::Broker {
                reason: format!("{reason}; whether the task ran is unknown"),
            });
            inner.members.iter().map(|m| m.info.name.clone()).collect()
        };
        shared.changed.notify_waiters();
        // Their consumers are gone: they lose the pool and join again.
        for member in members {
            shared.member_gone(&member, reason.clone());
        }
        loop {
            match create_streams(&shared.broker, &shared.names, &shared.settings, false).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!("{e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        // Reports of the streams that were just made anew are not news.
        while lost.try_recv().is_ok() {}
        shared.lock().recovering = false;
        shared.changed.notify_waiters();
        tracing::info!(pool = %shared.pool, "the pool's streams are back; members may join again");
    }
}
