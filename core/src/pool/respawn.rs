//! Replacing dead workers: the restart policy, and the task that launches a replacement.

use super::link::{self, LinkReader, LinkWriter};
use super::shared::Shared;
use crate::error::Error;
use crate::launch::{Killer, Reaper};
use crate::runtime::BoxFuture;
use crate::state::Phase;
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
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
/// the other links (made by the builder, which knows the worker type).
pub(crate) type Launch = Box<
    dyn Fn(usize, Vec<std::os::fd::RawFd>, usize) -> BoxFuture<Result<Linked, Error>> + Send + Sync,
>;

/// How a pool replaces workers that die.
pub(crate) struct Respawner {
    pub(crate) launch: Launch,
    pub(crate) policy: RestartPolicy,
}

/// How often a worker may be replaced after failures, and how long to wait between tries.
///
/// A worker number may be relaunched at most `max_restarts` times within `window`; the first
/// relaunch is immediate, each further one waits twice as long as the one before, from
/// `initial` up to `max_delay`. Past the limit the worker stays dead (and is logged), so one
/// that crashes at start-up cannot spin. Graceful retirements (recycling) do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RestartPolicy {
    pub(crate) max_restarts: u32,
    pub(crate) window: Duration,
    pub(crate) initial: Duration,
    pub(crate) max_delay: Duration,
}

impl RestartPolicy {
    /// Records a relaunch at `now` and returns the wait before it, or `None` when the limit
    /// within the window is spent.
    pub(crate) fn next_delay(
        &self,
        recent: &mut VecDeque<Instant>,
        now: Instant,
    ) -> Option<Duration> {
        while recent
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) > self.window)
        {
            recent.pop_front();
        }
        if recent.len() >= self.max_restarts as usize {
            return None;
        }
        let earlier = recent.len() as u32;
        recent.push_back(now);
        Some(match earlier {
            0 => Duration::ZERO,
            n => self
                .initial
                .saturating_mul(1 << (n - 1).min(20))
                .min(self.max_delay),
        })
    }
}

/// Launches a replacement for `worker` after `delay`, retrying by the policy if it fails.
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
            if !delay.is_zero() {
                runtime.sleep(delay).await;
            }
            if shared.lock().state.phase() != Phase::Running {
                return settle(&shared);
            }
            let (fds, credit) = {
                let inner = shared.lock();
                let fds = inner.link_fds.iter().flatten().copied().collect();
                (fds, inner.state.replacement_credit(worker))
            };
            let error = match (respawner.launch)(worker, fds, credit).await {
                Ok(linked) => return register(&shared, worker, linked, credit).await,
                Err(e) => e,
            };
            let next = {
                let mut inner = shared.lock();
                respawner.policy.next_delay(&mut inner.restarts[worker], runtime.now())
            };
            tracing::error!(pool = %shared.settings.name, worker, "cannot replace worker {worker}: {error}");
            match next {
                Some(d) => delay = d,
                None => {
                    tracing::error!(pool = %shared.settings.name, worker, "giving up on worker {worker}");
                    shared.lock().state.handle_given_up(worker);
                    return settle(&shared);
                }
            }
        }
    }));
}

/// A replacement settled (registered, abandoned or given up): `stop` may be waiting for it.
fn settle<O>(shared: &Shared<O>) {
    shared.lock().respawning -= 1;
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
                .handle_ready(worker)
                .expect("a fresh worker's first handshake");
            inner.killers[worker] = Some(linked.killer.clone());
            inner.pids[worker] = Some(linked.pid);
            inner.link_fds[worker] = linked.fd;
            inner.exits[worker] = None;
            inner.completed[worker] = 0;
            inner.kill_cause[worker] = None;
            inner.accounts[worker].restarts += 1;
            shared.instruments[worker].restarts.increment(1);
            Some(generation)
        } else {
            None
        }
    };
    match generation {
        Some(generation) => {
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
        }
    }
    settle(shared);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_and_stop_at_the_limit_within_the_window() {
        let policy = RestartPolicy {
            max_restarts: 4,
            window: Duration::from_secs(60),
            initial: Duration::from_millis(10),
            max_delay: Duration::from_millis(25),
        };
        let t0 = Instant::now();
        let mut recent = VecDeque::new();
        let delays: Vec<_> = (0..5).map(|_| policy.next_delay(&mut recent, t0)).collect();
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(delays, [ms(0), ms(10), ms(20), ms(25), None]);
        // Once the window has passed, the worker may be relaunched again.
        assert_eq!(
            policy.next_delay(&mut recent, t0 + Duration::from_secs(61)),
            ms(0)
        );
    }
}
