//! What the program holds of a NATS pool's own: member events, and how a pool stopped (task
//! handles, deliveries and the output stream are the core's).

use tokio::sync::broadcast;

/// What a member told the parent when it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberInfo {
    /// The member's name, unique in the pool.
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// Unfinished tasks it holds at most: its consumer's `max_ack_pending`.
    pub capacity: usize,
    /// Worker processes (or threads) it runs.
    pub workers: usize,
}

/// A member joined or left.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberEvent {
    /// A member joined; tasks may now be routed to it.
    Joined(MemberInfo),
    /// A member left (it said so, or went silent past the member timeout); no task is routed
    /// to it any more, and those it held go to other members.
    Left {
        /// Its name.
        member: String,
        /// Why.
        reason: String,
    },
}

/// The stream of [`MemberEvent`]s from the moment it was taken.
#[derive(Debug)]
pub struct MemberEvents {
    pub(super) rx: broadcast::Receiver<MemberEvent>,
}

impl MemberEvents {
    /// The next event; `None` once the pool is dropped. Events missed by a receiver that fell
    /// more than 1024 behind are skipped.
    pub async fn recv(&mut self) -> Option<MemberEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// How a pool stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stopped {
    /// Members that left when told to.
    pub left: Vec<String>,
    /// Members that did not leave within the stop timeout.
    pub unresponsive: Vec<String>,
}
