//! The parent: a pool whose members join over NATS, with the local pool's routing, credit,
//! stop and exactly-once guarantees.
//!
//! `builder` configures and starts it; task handles, deliveries and the output stream are the
//! core's, and `handle` holds what else the program gets back (member events, how the pool
//! stopped), `dead` the dead letters, `call` request-reply calls; `shared` what the parent's
//! tasks share, `inner` its table (placement decided by the core's sans-IO
//! [`Members`](looppool_core::state::members::Members)), with `sessions` what it keeps of each
//! member's runs; `join` the parent's side of joining and leaving, `reclaim` of taking a gone
//! member's tasks back, `arrivals` of members' outputs and ends; `lease` keeps the pool to one
//! parent; `tasks` the loops that serve the broker's subjects and streams.

mod arrivals;
mod builder;
mod call;
mod cancel;
mod dead;
mod handle;
mod inner;
mod join;
mod lease;
mod reclaim;
mod recover;
mod sessions;
mod shared;
mod stop;
mod store;
mod submit;
mod tasks;

pub use crate::broker::JetStreamApi;
pub use builder::Builder;
use builder::Settings;
pub use dead::DeadLetter;
pub use handle::{MemberEvent, MemberEvents, MemberInfo, Stopped};
use looppool_core::{Outputs, TaskHandle};

use self::shared::Shared;
use crate::broker;
use crate::error::Error;
use looppool_core::SubmitError;
use looppool_core::Worker;
use std::fmt;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

/// A pool of members on any number of hosts, reached through NATS JetStream.
///
/// Routing is the local pool's: round-robin over the live members in the order they joined,
/// targeted to one member, or broadcast to each (sticky broadcasts also reach every member
/// that joins later, before its first task). Each member's JetStream consumer holds at most
/// its capacity of unacknowledged tasks; the parent sends a member at most its backlog.
pub struct Pool<W: Worker> {
    shared: Arc<Shared<W::Output>>,
    _worker: PhantomData<fn(W)>,
}

impl<W: Worker> fmt::Debug for Pool<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared.pool)
            .field("members", &self.members().len())
            .finish()
    }
}

#[derive(Clone, Copy)]
enum Target<'a> {
    Any,
    Member(&'a str),
}

impl<W: Worker> Pool<W> {
    /// A builder for a pool named `pool` on the NATS server at `server`.
    pub fn builder(server: impl Into<String>, pool: impl Into<String>) -> Builder<W> {
        Builder::new(server, pool)
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.shared.pool
    }

    /// The live members, in the order they joined.
    pub fn members(&self) -> Vec<MemberInfo> {
        let inner = self.shared.lock();
        inner.members.iter().map(|m| m.info.clone()).collect()
    }

    /// Unfinished tasks sent to `member`, or `None` if it is not in the pool.
    pub fn outstanding(&self, member: &str) -> Option<usize> {
        let inner = self.shared.lock();
        inner.placement.backlog(&member.to_string())
    }

    /// Messages on the pool's subjects the parent refused so far: not sealed with the pool's
    /// secret, repeated, from a run of a member that is not in the pool, or ending or feeding
    /// a task the sender does not hold. The first is logged as a warning.
    pub fn refused(&self) -> u64 {
        self.shared.refused.count()
    }

    /// Members joining and leaving, from now on.
    pub fn events(&self) -> MemberEvents {
        MemberEvents {
            rx: self.shared.events.subscribe(),
        }
    }

    /// Waits until at least `n` members are in the pool, and returns them.
    pub async fn wait_for_members(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<MemberInfo>, Error> {
        let wait = async {
            loop {
                let mut notified = pin!(self.shared.changed.notified());
                notified.as_mut().enable();
                let members = self.members();
                if members.len() >= n {
                    return members;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            Error::Timeout(format!(
                "{} of {n} members joined pool {} within {timeout:?}",
                self.members().len(),
                self.shared.pool
            ))
        })
    }

    /// The stream of outputs. Clones share one stream: each output goes to one receiver.
    pub fn outputs(&self) -> Outputs<W::Output> {
        self.shared.outputs_tx.subscribe()
    }

    /// Submits a task to the next member in turn, waiting while that member holds its backlog.
    pub async fn submit(
        &self,
        task: W::Task,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        self.submit_inner(Target::Any, task, true).await
    }

    /// Like [`submit`](Self::submit), refusing with [`SubmitError::Full`] instead of waiting,
    /// and returning once the task is placed: the pool stores it on the broker right after,
    /// tasks in the order they were placed (but for one the broker took only on a retry). A
    /// task the broker does not store ends with
    /// [`TaskError::Broker`](looppool_core::TaskError::Broker) (where `submit` would return
    /// [`SubmitError::Broker`]).
    pub fn try_submit(&self, task: W::Task) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        self.place_and_store(Target::Any, task)
    }

    /// Submits a task to `member`, waiting while it holds its backlog. If that member leaves
    /// before the task ends, the task is lost (it is never run elsewhere).
    pub async fn submit_to(
        &self,
        member: &str,
        task: W::Task,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        self.submit_inner(Target::Member(member), task, true).await
    }

    /// Like [`submit_to`](Self::submit_to), refusing with [`SubmitError::Full`] instead of
    /// waiting, and returning once the task is placed, as [`try_submit`](Self::try_submit)
    /// does.
    pub fn try_submit_to(
        &self,
        member: &str,
        task: W::Task,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        self.place_and_store(Target::Member(member), task)
    }

    /// Sends a task to every live member, after everything submitted to it before; one handle
    /// per member, in the order of [`members`](Self::members). Returns once the copies are
    /// placed; the pool stores them right after, and a copy the broker does not store ends
    /// with [`TaskError::Broker`](looppool_core::TaskError::Broker).
    pub async fn broadcast(
        &self,
        task: W::Task,
    ) -> Result<Vec<TaskHandle<W::Error>>, SubmitError<W::Task>> {
        self.broadcast_inner(None, task)
    }

    /// Like [`broadcast`](Self::broadcast), and also remembered under `key` (replacing an
    /// earlier sticky broadcast with that key): every member that joins later receives the
    /// remembered broadcasts, in the order they were last set, before its first task. With no
    /// member in the pool it is only remembered.
    pub async fn broadcast_sticky(
        &self,
        key: &str,
        task: W::Task,
    ) -> Result<Vec<TaskHandle<W::Error>>, SubmitError<W::Task>> {
        self.broadcast_inner(Some(key), task)
    }
}

impl<W: Worker> Drop for Pool<W> {
    fn drop(&mut self) {
        // Members notice the silence and leave.
        self.shared.abort_background();
    }
}
