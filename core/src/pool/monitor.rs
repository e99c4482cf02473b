//! A worker's monitor in the parent: blocked-loop reports, and the measurements the state's
//! stall limit and memory limit judge (its loop's silence, its resident memory).

use super::shared::Shared;
use crate::state::WorkerStatus;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// Watches one incarnation: reports its loop as blocked when it falls silent past the
/// threshold, and tells the state how long its loop has been silent (the state has it killed
/// past the stall limit while it holds tasks) and how much memory it uses (the state retires
/// it past the memory limit).
pub(super) async fn monitor<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    worker: usize,
    generation: u64,
) {
    let settings = &shared.settings;
    loop {
        let slept_at = shared.runtime.now();
        shared.runtime.sleep(settings.monitor_every).await;
        // Woken late, the parent's own loop was stalled: the worker's heartbeats may still wait
        // unread in its link, so the silence measured now is partly the parent's. Judging it
        // would report (or kill) a worker for the parent's stall; the next round judges.
        let parent_stalled = shared
            .runtime
            .now()
            .saturating_duration_since(slept_at)
            .saturating_sub(settings.monitor_every)
            > settings.monitor_every;
        let (current, pid) = {
            let inner = shared.lock();
            let state = &inner.state;
            let gone = matches!(
                state.status(worker),
                WorkerStatus::Exited | WorkerStatus::Replacing
            );
            (
                state.generation(worker) == generation && !gone,
                inner.workers[worker].pid,
            )
        };
        if !current {
            return;
        }
        if let (Some(threshold), false) = (settings.blocked_threshold, parent_stalled) {
            watch_blocked(&shared, worker, threshold);
        }
        if settings.watch_stalls && !parent_stalled {
            let silent = shared.silent_for(worker);
            let actions = {
                let mut inner = shared.lock();
                if inner.state.generation(worker) == generation {
                    inner.state.handle_silence(worker, silent);
                }
                shared.decisions(&mut inner)
            };
            actions.run(&shared);
        }
        if let (true, true, Some(pid)) = (settings.watch_memory, settings.processes, pid) {
            if let Some(rss) = resident_bytes(pid) {
                let actions = {
                    let mut inner = shared.lock();
                    if inner.state.generation(worker) == generation {
                        inner.state.handle_memory(worker, rss);
                    }
                    shared.decisions(&mut inner)
                };
                actions.run(&shared);
            }
        }
    }
}

/// Reports worker `worker` as blocked when it has been silent past `threshold`, once per
/// episode, and notes when it turns again.
fn watch_blocked<O>(shared: &Shared<O>, worker: usize, threshold: Duration) {
    let silent = shared.silent_for(worker);
    let now = shared.runtime.now();
    let mut inner = shared.lock();
    let concurrency = shared.settings.concurrency;
    let blocked = silent > threshold;
    match (blocked, inner.workers[worker].account.blocked_since) {
        (true, None) => {
            // Tasks start in the order they were sent, so the oldest ones held are running.
            let mut running = inner.state.held_ids(worker);
            running.truncate(concurrency);
            drop(inner);
            // Logged before it is counted: whoever sees the count can find the warning. Only
            // this worker's monitor changes its episode, so nothing moves in between.
            tracing::warn!(
                pool = %shared.settings.name,
                worker,
                tasks = ?running,
                blocked_for = ?silent,
                "the event loop of worker {worker} has not turned for {silent:?} (threshold \
                 {threshold:?}); running tasks {running:?}"
            );
            let mut inner = shared.lock();
            let account = &mut inner.workers[worker].account;
            account.blocked_since = Some(now.checked_sub(silent).unwrap_or(now));
            account.blocked_total += 1;
            drop(inner);
            shared.lanes[worker].instruments.blocked.increment(1);
        }
        (false, Some(since)) => {
            inner.workers[worker].account.blocked_since = None;
            drop(inner);
            let took = now.saturating_duration_since(since).saturating_sub(silent);
            tracing::info!(
                pool = %shared.settings.name,
                worker,
                "the event loop of worker {worker} turns again after about {took:?}"
            );
        }
        _ => {}
    }
}

/// A process's resident memory, from `/proc`.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
