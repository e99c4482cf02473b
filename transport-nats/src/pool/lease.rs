//! One parent per pool: a lease in a JetStream key-value bucket, renewed every heartbeat.
//!
//! The bucket keeps one key whose entries expire a lease time after they were stored (the
//! bucket's `max_age`, on the server's clock). A parent starts only if it can create the key;
//! while it lives it renews the key with the revision it last wrote, so a second parent finds
//! it taken, and a parent that died is taken over once its last entry expired.

use super::Settings;
use crate::broker::{self, Broker};
use crate::error::Error;
use crate::wire::{self, Names};
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use serde::{Deserialize, Serialize};

const KEY: &str = "parent";

/// Who holds a pool's lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holder {
    run: u64,
    host: String,
    pid: u32,
}

impl Holder {
    fn describe(bytes: &[u8]) -> String {
        match wire::decode::<Holder>(bytes) {
            Ok(h) => format!("the parent on host {} (pid {})", h.host, h.pid),
            Err(_) => "a parent of another looppool version".into(),
        }
    }
}

/// The run of the parent holding the pool's lease, if one does (`Err` if the broker did not
/// answer).
pub(super) async fn holder(
    broker: &Broker,
    names: &Names,
) -> Result<Option<(u64, String)>, String> {
    let kv = match broker.js.get_key_value(names.lease_bucket()).await {
        Ok(kv) => kv,
        Err(e) => {
            let text = broker::error_text(&e);
            return match text.contains("stream not found") {
                true => Ok(None),
                false => Err(text),
            };
        }
    };
    match kv.entry(KEY).await {
        Ok(Some(entry)) if entry.operation == Operation::Put => {
            let run = wire::decode::<Holder>(&entry.value).map_or(0, |h| h.run);
            Ok(Some((run, Holder::describe(&entry.value))))
        }
        Ok(_) => Ok(None),
        Err(e) => Err(broker::error_text(&e)),
    }
}

/// This parent's lease on its pool.
pub(super) struct Lease {
    js: async_nats::jetstream::Context,
    config: kv::Config,
    kv: kv::Store,
    run: u64,
    value: bytes::Bytes,
    revision: u64,
}

/// Why a renewal did not go through.
pub(super) enum Renewal {
    /// Another parent holds the pool now.
    Lost(String),
    /// The broker did not answer; try again.
    Unanswered(String),
}

impl Lease {
    /// Takes the lease of the pool `names` names, or says which parent holds it.
    pub(super) async fn acquire(
        broker: &Broker,
        names: &Names,
        run: u64,
        settings: &Settings,
    ) -> Result<Self, Error> {
        let bucket = names.lease_bucket();
        let ttl = settings.lease_time();
        let config = kv::Config {
            bucket: bucket.clone(),
            history: 1,
            max_age: ttl,
            storage: settings.storage,
            num_replicas: settings.replicas,
            ..Default::default()
        };
        let kv = match broker.js.create_key_value(config.clone()).await {
            Ok(kv) => kv,
            // There already, with another lease time: the first parent's holds.
            Err(created) => broker.js.get_key_value(&bucket).await.map_err(|e| {
                Error::Broker(format!(
                    "cannot create the pool's lease bucket {bucket} (is JetStream enabled on \
                     the server?): {}; nor open it: {}",
                    broker::error_text(&created),
                    broker::error_text(&e)
                ))
            })?,
        };
        let holder = Holder {
            run,
            host: crate::member::host_name(),
            pid: std::process::id(),
        };
        let value: bytes::Bytes = wire::encode(&holder).map_err(Error::Config)?.into();
        match kv.create(KEY, value.clone()).await {
            Ok(revision) => Ok(Self {
                js: broker.js.clone(),
                config,
                kv,
                run,
                value,
                revision,
            }),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let holder = match kv.entry(KEY).await {
                    Ok(Some(entry)) => Holder::describe(&entry.value),
                    _ => "another parent".into(),
                };
                Err(Error::InUse(format!(
                    "pool {} has a live parent: {holder}. A second parent is refused; one \
                     that died is taken over {ttl:?} after its last renewal",
                    names.pool()
                )))
            }
            Err(e) => Err(Error::Broker(format!(
                "cannot take the pool's lease: {}",
                broker::error_text(&e)
            ))),
        }
    }

    /// Gives the lease up (a parent that did not start after all).
    pub(super) async fn release(self) {
        if let Err(e) = self
            .kv
            .purge_expect_revision(KEY, Some(self.revision))
            .await
        {
            tracing::warn!(
                "cannot give the pool's lease up: {}",
                broker::error_text(&e)
            );
        }
    }

    /// Renews the lease.
    pub(super) async fn renew(&mut self) -> Result<(), Renewal> {
        let unanswered = |e: &dyn std::error::Error| Renewal::Unanswered(broker::error_text(e));
        match self.kv.update(KEY, self.value.clone(), self.revision).await {
            Ok(revision) => {
                self.revision = revision;
                return Ok(());
            }
            Err(e) if e.kind() != kv::UpdateErrorKind::WrongLastRevision => {
                // The bucket is gone with the broker's store: make it anew.
                let gone = broker::error_text(&e);
                if !(gone.contains("stream not found") || gone.contains("no responders")) {
                    return Err(unanswered(&e));
                }
                self.kv = self
                    .js
                    .create_key_value(self.config.clone())
                    .await
                    .map_err(|e| unanswered(&e))?;
            }
            Err(_) => {}
        }
        match self.kv.entry(KEY).await.map_err(|e| unanswered(&e))? {
            Some(entry) if entry.operation == Operation::Put => {
                match wire::decode::<Holder>(&entry.value) {
                    // A renewal of ours that went through though its answer was lost.
                    Ok(h) if h.run == self.run => {
                        self.revision = entry.revision;
                        Ok(())
                    }
                    _ => Err(Renewal::Lost(Holder::describe(&entry.value))),
                }
            }
            // It ran out (this parent was cut off from the broker that long), or the broker
            // lost its store: take it again if nobody else did.
            _ => match self.kv.create(KEY, self.value.clone()).await {
                Ok(revision) => {
                    tracing::warn!("the pool's lease had run out; this parent took it again");
                    self.revision = revision;
                    Ok(())
                }
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                    Err(Renewal::Lost("another parent".into()))
                }
                Err(e) => Err(unanswered(&e)),
            },
        }
    }
}
