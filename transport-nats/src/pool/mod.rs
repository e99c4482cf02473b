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
mod tasks;

pub use crate::broker::JetStreamApi;
pub use builder::Builder;
use builder::Settings;
pub use dead::DeadLetter;
pub use handle::{MemberEvent, MemberEvents, MemberInfo, Stopped};
use looppool_core::{Delivery, Outputs, TaskHandle};

use self::inner::Sticky;
use self::shared::{lock, Shared};
use self::store::ToStore;
use crate::broker;
use crate::error::Error;
use crate::wire;
use looppool_core::state::members::{For, Unplaced};
use looppool_core::state::Refusal;
use looppool_core::SubmitError;
use looppool_core::Worker;
use std::fmt;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

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
        Outputs::from_channel(self.shared.outputs_rx.clone())
    }

    /// Submits a task to the next member in turn, waiting while that member holds its backlog.
    pub async fn submit(
        &self,
        task: W::Task,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        self.submit_inner(Target::Any, task, true, None).await
    }

    /// Like [`submit`](Self::submit), refusing with [`SubmitError::Full`] instead of waiting,
    /// and returning once the task is placed: the pool stores it on the broker right after,
    /// tasks in the order they were placed. A task the broker does not store ends with
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
        self.submit_inner(Target::Member(member), task, true, None)
            .await
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
    /// per member, in the order of [`members`](Self::members).
    pub async fn broadcast(
        &self,
        task: W::Task,
    ) -> Result<Vec<TaskHandle<W::Error>>, SubmitError<W::Task>> {
        self.broadcast_inner(None, task).await
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
        self.broadcast_inner(Some(key), task).await
    }

    fn encode(&self, task: &W::Task) -> Result<Vec<u8>, String> {
        let payload = wire::encode(task)?;
        // Room for the envelope and the headers.
        let limit = self.shared.broker.max_payload().saturating_sub(512);
        if payload.len() > limit {
            return Err(format!(
                "the task is {} bytes; the broker takes messages up to {} bytes (its \
                 max_payload) with room for the envelope",
                payload.len(),
                limit
            ));
        }
        Ok(payload)
    }

    /// Places `task` for `target` (waiting for room if `wait`) and stores it for its member.
    /// With `reply`, the task's first output goes there and later ones are dropped, none to
    /// [`outputs`](Self::outputs).
    async fn submit_inner(
        &self,
        target: Target<'_>,
        task: W::Task,
        wait: bool,
        reply: Option<oneshot::Sender<Delivery<W::Output>>>,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        let payload = match self.encode(&task) {
            Ok(p) => p,
            Err(e) => return Err(SubmitError::Encode(task, e)),
        };
        let shared = &self.shared;
        let (id, member, handle) = loop {
            let mut notified = pin!(shared.changed.notified());
            notified.as_mut().enable();
            match self.place(target, reply.is_some()) {
                Ok(placed) => break placed,
                Err(NotPlaced::Full) if wait => {}
                Err(why) => return Err(why.with(task)),
            }
            notified.await;
        };
        if let Some(reply) = reply {
            // Before the task is stored: no output of it can have arrived.
            shared.expect_reply(id, reply);
        }
        match shared.send_task(id, &member, 0, payload).await {
            Ok(()) => Ok(handle),
            Err(e) => {
                shared.withdraw(id);
                lock(&shared.calls).remove(&id);
                Err(SubmitError::Broker(task, e.to_string()))
            }
        }
    }

    /// Places `task` for `target` now, or refuses, and has the pool store it.
    fn place_and_store(
        &self,
        target: Target<'_>,
        task: W::Task,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        let payload = match self.encode(&task) {
            Ok(p) => p,
            Err(e) => return Err(SubmitError::Encode(task, e)),
        };
        let (id, member, handle) = self.place(target, false).map_err(|why| why.with(task))?;
        let store = ToStore {
            id,
            member,
            payload,
        };
        if self.shared.store.send(store).is_err() {
            // The storing loop ended: the pool is being dropped.
            self.shared.withdraw(id);
        }
        Ok(handle)
    }

    /// Places a task for `target` on a member with room, as the pool's placement decides.
    fn place(
        &self,
        target: Target<'_>,
        call: bool,
    ) -> Result<(u64, String, TaskHandle<W::Error>), NotPlaced> {
        let mut inner = self.shared.lock();
        if inner.closed() {
            return Err(NotPlaced::Closed(inner.failed.clone()));
        }
        if let Some(why) = &inner.broker_gone {
            return Err(NotPlaced::Broker(format!("the broker is {why}")));
        }
        let named = match target {
            Target::Any => None,
            Target::Member(m) => Some(m.to_string()),
        };
        match inner.place(named.as_ref().map_or(For::Any, For::Member)) {
            Ok(placed) => {
                if let Some(p) = inner.tasks.get_mut(&placed.0) {
                    p.call = call;
                }
                Ok(placed)
            }
            Err(Unplaced::Closed) => Err(NotPlaced::Closed(inner.failed.clone())),
            Err(Unplaced::NoMember) => Err(NotPlaced::Unroutable(Refusal::NoMembers)),
            Err(Unplaced::Unknown) => Err(NotPlaced::Unroutable(Refusal::UnknownMember)),
            Err(Unplaced::Full(_)) => Err(NotPlaced::Full),
        }
    }

    async fn broadcast_inner(
        &self,
        key: Option<&str>,
        task: W::Task,
    ) -> Result<Vec<TaskHandle<W::Error>>, SubmitError<W::Task>> {
        let payload = match self.encode(&task) {
            Ok(p) => p,
            Err(e) => return Err(SubmitError::Encode(task, e)),
        };
        let shared = &self.shared;
        let placed = {
            let mut inner = shared.lock();
            if inner.closed() {
                return Err(NotPlaced::Closed(inner.failed.clone()).with(task));
            }
            if let Some(why) = &inner.broker_gone {
                return Err(SubmitError::Broker(task, format!("the broker is {why}")));
            }
            if let Some(key) = key {
                inner.sticky.retain(|s| s.key != key);
                inner.sticky_set += 1;
                let set = inner.sticky_set;
                inner.sticky.push(Sticky {
                    key: key.into(),
                    set,
                    payload: payload.clone(),
                });
            } else if inner.members.is_empty() {
                return Err(SubmitError::Unroutable(task, Refusal::NoMembers));
            }
            inner.broadcast()
        };
        let mut handles = Vec::with_capacity(placed.len());
        for (id, member, handle) in placed {
            if let Err(e) = shared.send_task(id, &member, 0, payload.clone()).await {
                shared.lose(id, &member, 0, format!("the broker did not take it: {e}"));
            }
            handles.push(handle);
        }
        Ok(handles)
    }
}

/// Why a task was not placed; the submission's error once it has its task back.
enum NotPlaced {
    /// The pool is stopping, or failed (why).
    Closed(Option<String>),
    Broker(String),
    Unroutable(Refusal),
    Full,
}

impl NotPlaced {
    fn with<T>(self, task: T) -> SubmitError<T> {
        match self {
            NotPlaced::Closed(Some(why)) => {
                SubmitError::Broker(task, format!("the pool failed: {why}"))
            }
            NotPlaced::Closed(None) => SubmitError::Closed(task),
            NotPlaced::Broker(why) => SubmitError::Broker(task, why),
            NotPlaced::Unroutable(r) => SubmitError::Unroutable(task, r),
            NotPlaced::Full => SubmitError::Full(task),
        }
    }
}

impl<W: Worker> Drop for Pool<W> {
    fn drop(&mut self) {
        // Members notice the silence and leave.
        self.shared.abort_background();
    }
}
