//! Placing tasks on members and handing them to the pool's storing loop
//! ([`super::store`]), which stores them in the order they were placed.

use super::inner::Sticky;
use super::shared::lock;
use super::{Pool, Target};
use crate::wire;
use looppool_core::state::members::{For, Unplaced};
use looppool_core::state::Refusal;
use looppool_core::{SubmitError, TaskHandle, Worker};
use std::pin::pin;

/// A task placed on a member: its id, that member, and its handle.
pub(super) type Placed<E> = (u64, String, TaskHandle<E>);

impl<W: Worker> Pool<W> {
    pub(super) fn encode(&self, task: &W::Task) -> Result<Vec<u8>, String> {
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

    /// Places `task` for `target` (waiting for room if `wait`) and returns once the broker
    /// stored it.
    pub(super) async fn submit_inner(
        &self,
        target: Target<'_>,
        task: W::Task,
        wait: bool,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        let payload = match self.encode(&task) {
            Ok(p) => p,
            Err(e) => return Err(SubmitError::Encode(task, e)),
        };
        let (id, member, handle) = match self.place_when_room(target, wait, false).await {
            Ok(placed) => placed,
            Err(why) => return Err(why.with(task)),
        };
        match self.stored(id, member, payload).await {
            Ok(()) => Ok(handle),
            Err(e) => Err(SubmitError::Broker(task, e)),
        }
    }

    /// Places a task for `target`, waiting for room if `wait`; a call's task if `call`.
    pub(super) async fn place_when_room(
        &self,
        target: Target<'_>,
        wait: bool,
        call: bool,
    ) -> Result<Placed<W::Error>, NotPlaced> {
        loop {
            let mut notified = pin!(self.shared.changed.notified());
            notified.as_mut().enable();
            match self.place(target, call) {
                Err(NotPlaced::Full) if wait => {}
                placed => return placed,
            }
            notified.await;
        }
    }

    /// Has placed task `id` stored for `member`, and waits until the broker stored it. A task
    /// the broker did not take has left the table: `Err` says why. Should this future be
    /// dropped first, the task is stored all the same, or leaves the table if it is not.
    pub(super) async fn stored(
        &self,
        id: u64,
        member: String,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let shared = &self.shared;
        let (tx, rx) = tokio::sync::oneshot::channel();
        shared.store_task(id, member, payload, Some(tx));
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                // The storing loop was aborted with the pool.
                shared.withdraw(id);
                lock(&shared.calls).remove(&id);
                Err("the pool was dropped".to_string())
            }
        }
    }

    /// Places `task` for `target` now, or refuses, and has the pool store it.
    pub(super) fn place_and_store(
        &self,
        target: Target<'_>,
        task: W::Task,
    ) -> Result<TaskHandle<W::Error>, SubmitError<W::Task>> {
        let payload = match self.encode(&task) {
            Ok(p) => p,
            Err(e) => return Err(SubmitError::Encode(task, e)),
        };
        let (id, member, handle) = self.place(target, false).map_err(|why| why.with(task))?;
        self.shared.store_task(id, member, payload, None);
        Ok(handle)
    }

    /// Places a task for `target` on a member with room, as the pool's placement decides.
    fn place(&self, target: Target<'_>, call: bool) -> Result<Placed<W::Error>, NotPlaced> {
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

    /// Places one copy of `task` on every live member (and, with `key`, remembers it for
    /// members joining later), and has the copies stored.
    pub(super) fn broadcast_inner(
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
            shared.store_task(id, member, payload.clone(), None);
            handles.push(handle);
        }
        Ok(handles)
    }
}

/// Why a task was not placed; the submission's error once it has its task back.
pub(super) enum NotPlaced {
    /// The pool is stopping, or failed (why).
    Closed(Option<String>),
    Broker(String),
    Unroutable(Refusal),
    Full,
}

impl NotPlaced {
    pub(super) fn with<T>(self, task: T) -> SubmitError<T> {
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
