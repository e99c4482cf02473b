//! One supervisor per worker number: it runs the worker's link until the worker is gone, then
//! carries out what the state decided for the number (a relaunch after its backoff, or a wait
//! until a given-up number is tried again) and runs the replacement's link in turn. It decides
//! nothing itself: every "whether" and "when" comes from the state's events.

use super::incarnation::{Linked, OnSpawn};
use super::link;
use super::shared::{Next, Shared};
use crate::state::Phase;
use futures_util::future::select;
use serde::de::DeserializeOwned;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Starts the supervisor of worker number `worker`, whose first incarnation is `first`.
pub(crate) fn spawn<O: DeserializeOwned + Send + 'static>(
    shared: &Arc<Shared<O>>,
    worker: usize,
    first: Linked,
) {
    let runtime = shared.runtime.clone();
    runtime.spawn(Box::pin(supervise(shared.clone(), worker, first)));
}

async fn supervise<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    worker: usize,
    first: Linked,
) {
    let mut linked = Some((first, 0));
    loop {
        if let Some((incarnation, generation)) = linked.take() {
            link::run(&shared, worker, generation, incarnation).await;
        }
        match next(&shared, worker).await {
            None => return,
            Some(Next::Launch(after)) => {
                if !wait_while_running(&shared, worker, after).await {
                    abandon(&shared);
                    continue;
                }
                linked = launch(&shared, worker).await;
            }
            Some(Next::Retry(at)) => wait_for_retry(&shared, worker, at).await,
        }
    }
}

/// What the state decided next for `worker`, once it has; `None` once the pool is stopping and
/// nothing is.
async fn next<O>(shared: &Shared<O>, worker: usize) -> Option<Next> {
    loop {
        let listener = shared.lanes[worker].supervisor.listen();
        {
            let mut inner = shared.lock();
            if let Some(next) = inner.workers[worker].next.take() {
                return Some(next);
            }
            if inner.state.phase() != Phase::Running {
                return None;
            }
        }
        listener.await;
    }
}

/// Waits `wait`; returns `false` at once if the pool stops meanwhile: a stop must not wait out
/// a backoff.
async fn wait_while_running<O>(shared: &Shared<O>, worker: usize, wait: Duration) -> bool {
    let runtime = &shared.runtime;
    let until = runtime.now() + wait;
    loop {
        let listener = shared.lanes[worker].supervisor.listen();
        if shared.lock().state.phase() != Phase::Running {
            return false;
        }
        let now = runtime.now();
        if now >= until {
            return true;
        }
        let _ = select(runtime.sleep(until - now), listener).await;
    }
}

/// A given-up `worker` waits until `at`, then asks the state to try it again. A revival on
/// request or a stop ends the wait early.
async fn wait_for_retry<O>(shared: &Shared<O>, worker: usize, mut at: Instant) {
    let runtime = shared.runtime.clone();
    loop {
        let listener = shared.lanes[worker].supervisor.listen();
        {
            let inner = shared.lock();
            if inner.state.phase() != Phase::Running || inner.workers[worker].next.is_some() {
                return;
            }
        }
        let now = runtime.now();
        if now < at {
            let _ = select(runtime.sleep(at - now), listener).await;
            continue;
        }
        let (revived, until, actions) = {
            let mut inner = shared.lock();
            let revived = inner.state.revive(worker, Some(now));
            let until = inner.state.given_up_until(worker);
            (revived, until, shared.decisions(&mut inner))
        };
        actions.run(shared);
        if revived {
            tracing::info!(pool = %shared.settings.name, worker, "trying worker {worker} again");
            return;
        }
        match until {
            // A timer that fired early waits again.
            Some(until) => at = until.max(now + Duration::from_millis(10)),
            None => return,
        }
    }
}

/// Brings the given-up `worker` back now, on request. Returns whether a replacement is on its
/// way.
pub(crate) fn revive<O>(shared: &Shared<O>, worker: usize) -> bool {
    if shared.respawner.is_none() {
        return false;
    }
    let (revived, actions) = {
        let mut inner = shared.lock();
        let revived = inner.state.revive(worker, None);
        (revived, shared.decisions(&mut inner))
    };
    actions.run(shared);
    if revived {
        tracing::info!(pool = %shared.settings.name, worker, "trying worker {worker} again");
    }
    revived
}

/// Launches a replacement for `worker`. Returns it and its generation once registered; on a
/// failed launch the state decides again.
async fn launch<O: DeserializeOwned + Send + 'static>(
    shared: &Arc<Shared<O>>,
    worker: usize,
) -> Option<(Linked, u64)> {
    let Some(respawner) = shared.respawner.as_ref() else {
        // The state relaunches nothing without a restart policy, which comes with the launch.
        abandon(shared);
        return None;
    };
    let (fds, credit) = {
        let inner = shared.lock();
        // Forked, it would inherit every one of them.
        let fds = inner
            .workers
            .iter()
            .flat_map(|w| {
                let sender = w.sender.as_ref().map(|s| s.as_raw_fd());
                w.link_fd.into_iter().chain(sender)
            })
            .collect();
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
        Ok(linked) => return register(shared, worker, linked, credit).await,
        Err(e) => e,
    };
    let now = shared.runtime.now();
    let actions = {
        let mut inner = shared.lock();
        if inner.state.phase() == Phase::Running {
            tracing::error!(pool = %shared.settings.name, worker, "cannot replace worker {worker}: {error}");
        } else {
            // The stop killed it while it launched.
            tracing::debug!(pool = %shared.settings.name, worker, "replacement of worker {worker} abandoned by the stop: {error}");
        }
        let _ = inner.state.handle_launch_failed(worker, now);
        shared.decisions(&mut inner)
    };
    actions.run(shared);
    // A launch that is not tried again is no longer under way: `stop` may be waiting for that.
    shared.wake_all();
    None
}

/// A replacement under way was abandoned because a stop began: `stop` may be waiting for it.
fn abandon<O>(shared: &Shared<O>) {
    shared.lock().state.handle_launch_abandoned();
    shared.wake_all();
}

/// Gives the launched replacement its number, unless a stop began meanwhile (then it is killed
/// and reaped).
async fn register<O: DeserializeOwned + Send + 'static>(
    shared: &Arc<Shared<O>>,
    worker: usize,
    mut linked: Linked,
    credit: usize,
) -> Option<(Linked, u64)> {
    let registered = {
        let mut inner = shared.lock();
        if inner.state.phase() == Phase::Running {
            let (generation, _replayed) = inner.state.handle_replaced(worker, credit);
            inner
                .state
                .handle_ready(worker, shared.runtime.now())
                .expect("a fresh worker's first handshake");
            let entry = &mut inner.workers[worker];
            entry.killer = Some(linked.killer.clone());
            entry.pid = Some(linked.pid);
            entry.link_fd = linked.fd;
            entry.sender = linked.sender.take();
            entry.carry.clear();
            entry.exit = None;
            entry.cause = None;
            entry.kill_cause = None;
            entry.account.restarts += 1;
            shared.lanes[worker].instruments.restarts.increment(1);
            Some((generation, shared.decisions(&mut inner)))
        } else {
            None
        }
    };
    match registered {
        Some((generation, actions)) => {
            actions.run(shared);
            shared.wake_all();
            tracing::info!(pool = %shared.settings.name, worker, pid = linked.pid, "replaced worker {worker}");
            Some((linked, generation))
        }
        None => {
            // A stop began while it was launching: it must not outlive the pool.
            linked.killer.kill();
            let mut reaper = linked.reaper;
            let _ = reaper.reap(&*shared.runtime).await;
            abandon(shared);
            None
        }
    }
}
