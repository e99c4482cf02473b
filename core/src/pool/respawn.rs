//! Replacing dead workers: the task that launches a replacement when the state says so.

use super::link::{self, LinkReader, LinkWriter};
use super::shared::Shared;
use crate::error::Error;
use crate::launch::{Killer, Reaper};
use crate::runtime::BoxFuture;
use crate::state::{Departure, Phase, Restart};
use futures_util::future::select;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A launched worker that answered its handshake.
pub(crate) struct Linked {
    pub(crate) reader: LinkReader,
    pub(crate) writer: LinkWriter,
    pub(crate) pid: u32,
    pub(crate) fd: Option<std::os::fd::RawFd>,
    pub(crate) killer: Killer,
    pub(crate) reaper: Reaper,
}

/// Launches and handshakes worker number `k` with a result credit, given the parent's ends of
/// the other links (made by the builder, which knows the worker type). The process's killer is
/// handed to the last argument as soon as it exists, before its handshake.
pub(crate) type Launch = Box<
    dyn Fn(usize, Vec<std::os::fd::RawFd>, usize, OnSpawn) -> BoxFuture<Result<Linked, Error>>
        + Send
        + Sync,
>;

/// Receives a launching worker's killer.
pub(crate) type OnSpawn = Box<dyn FnOnce(Killer) + Send>;

/// How a pool replaces workers that die: the launch. When to launch is the state's decision
/// ([`PoolState::decide_restart`](crate::state::PoolState::decide_restart)).
pub(crate) struct Respawner {
    pub(crate) launch: Launch,
}

/// Launches a replacement for `worker` after `delay`; if the launch fails, the state decides
/// whether and when to try again.
pub(crate) fn schedule<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    worker: usize,
    delay: Duration,
) {
    let runtime = shared.runtime.clone();
    runtime.spawn(Box::pin(async move {
        let runtime = shared.runtime.clone();
        let respawner = shared.respawner.as_ref().expect("respawn is on");
        let mut delay = delay;
        loop {
            // The wait ends early when a stop begins: a stop must not wait out a backoff.
            let until = runtime.now() + delay;
            loop {
                let listener = shared.exited.listen();
                let now = runtime.now();
                if now >= until || shared.lock().state.phase() != Phase::Running {
                    break;
                }
                let _ = select(runtime.sleep(until - now), listener).await;
            }
            if shared.lock().state.phase() != Phase::Running {
                return abandon(&shared);
            }
            let (fds, credit) = {
                let inner = shared.lock();
                let fds = inner.workers.iter().filter_map(|w| w.link_fd).collect();
                (fds, inner.state.replacement_credit(worker))
            };
            // A stop, a kill or a drop of the pool kills it while it launches (a slow init).
            let hold = shared.clone();
            let spawned: OnSpawn = Box::new(move |killer| {
                let mut inner = hold.lock();
                if inner.state.phase() == Phase::Running {
                    inner.workers[worker].launching = Some(killer);
                } else {
                    drop(inner);
                    killer.kill();
                }
            });
            let launched = (respawner.launch)(worker, fds, credit, spawned).await;
            shared.lock().workers[worker].launching = None;
            let error = match launched {
                Ok(linked) => return register(&shared, worker, linked, credit).await,
                Err(e) => e,
            };
            if shared.lock().state.phase() == Phase::Running {
                tracing::error!(pool = %shared.settings.name, worker, "cannot replace worker {worker}: {error}");
            } else {
                // The stop killed it while it launched.
                tracing::debug!(pool = %shared.settings.name, worker, "replacement of worker {worker} abandoned by the stop: {error}");
            }
            let decision =
                shared
                    .lock()
                    .state
                    .decide_restart(worker, runtime.now(), Departure::LaunchFailed);
            match decision {
                Restart::After(d) => delay = d,
                Restart::GiveUp { failures, retry_at } => {
                    given_up(&shared, worker, failures, retry_at);
                    return shared.wake_all();
                }
                Restart::Never => return shared.wake_all(),
            }
        }
    }));
}

/// Worker number `worker` was given up after `failures` quick failures: logs it, and tries it
/// again at `retry_at` if the state then agrees. The wait holds the pool weakly, so it does
/// not keep a dropped pool alive.
pub(crate) fn given_up<O: DeserializeOwned + Send + 'static>(
    shared: &Arc<Shared<O>>,
    worker: usize,
    failures: u32,
    retry_at: Instant,
) {
    let runtime = shared.runtime.clone();
    let wait = retry_at.saturating_duration_since(runtime.now());
    tracing::error!(
        pool = %shared.settings.name,
        worker,
        "worker {worker} failed quickly {failures} times; not replacing it for {wait:?} \
         (Pool::revive brings it back sooner)"
    );
    shared.wake_all();
    let weak = Arc::downgrade(shared);
    shared.runtime.spawn(Box::pin(async move {
        let mut wait = wait;
        loop {
            runtime.sleep(wait).await;
            let Some(shared) = weak.upgrade() else { return };
            let now = runtime.now();
            if revive(&shared, worker, Some(now)) {
                return;
            }
            // A timer that fired early waits again; a number revived meanwhile (or a stop)
            // ends the wait.
            let until = shared.lock().state.given_up_until(worker);
            match until {
                Some(at) if shared.lock().state.phase() == Phase::Running => {
                    wait = at
                        .saturating_duration_since(now)
                        .max(Duration::from_millis(10));
                }
                _ => return,
            }
        }
    }));
}

/// Brings the given-up `worker` back if the state agrees (its retry time came, or `now` is
/// `None`: on request). Returns whether a replacement is on its way.
pub(crate) fn revive<O: DeserializeOwned + Send + 'static>(
    shared: &Arc<Shared<O>>,
    worker: usize,
    now: Option<Instant>,
) -> bool {
    let revived = shared.respawner.is_some() && shared.lock().state.revive(worker, now);
    if revived {
        tracing::info!(pool = %shared.settings.name, worker, "trying worker {worker} again");
        schedule(shared.clone(), worker, Duration::ZERO);
        shared.wake_all();
    }
    revived
}

/// A replacement under way was abandoned because a stop began: `stop` may be waiting for it.
fn abandon<O>(shared: &Shared<O>) {
    shared.lock().state.handle_launch_abandoned();
    shared.wake_all();
}

async fn register<O: DeserializeOwned + Send + 'static>(
    shared: &Arc<Shared<O>>,
    worker: usize,
    linked: Linked,
    credit: usize,
) {
    let generation = {
        let mut inner = shared.lock();
        if inner.state.phase() == Phase::Running {
            let (generation, _replayed) = inner.state.handle_replaced(worker, credit);
            inner
                .state
                .handle_ready(worker, shared.runtime.now())
                .expect("a fresh worker's first handshake");
            inner.workers[worker].killer = Some(linked.killer.clone());
            inner.workers[worker].pid = Some(linked.pid);
            inner.workers[worker].link_fd = linked.fd;
            inner.workers[worker].exit = None;
            inner.workers[worker].kill_cause = None;
            inner.workers[worker].account.restarts += 1;
            shared.instruments[worker].restarts.increment(1);
            Some(generation)
        } else {
            None
        }
    };
    match generation {
        Some(generation) => {
            shared.wake_all();
            tracing::info!(pool = %shared.settings.name, worker, pid = linked.pid, "replaced worker {worker}");
            let Linked {
                reader,
                writer,
                killer,
                reaper,
                ..
            } = linked;
            link::spawn(shared, worker, generation, reader, writer, killer, reaper);
        }
        None => {
            // A stop began while it was launching: it must not outlive the pool.
            linked.killer.kill();
            let mut reaper = linked.reaper;
            let _ = reaper.reap(&*shared.runtime).await;
            abandon(shared);
        }
    }
}
