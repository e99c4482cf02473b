//! The vocabulary of the state: task ids, routes, refusals, protocol violations, what to
//! transmit, and the pool's phase.

use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// The identifier the pool gives each accepted task; unique within a pool.
pub type TaskId = u64;

/// A map keyed by task id. Ids are handed out in sequence by the pool (a worker's come from its
/// parent, never from an untrusted peer), so a multiplicative hash spreads them well and costs
/// a fraction of SipHash on the per-task path.
pub(crate) type IdMap<V> = std::collections::HashMap<TaskId, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing of a task id (see [`IdMap`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is expected; anything else is folded in byte by byte.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Where a submission should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Whichever worker the pool's [`Routing`] picks.
    Any,
    /// Worker number `k`.
    Worker(usize),
    /// The worker number a key hashes to (`hash % workers`): the same number for the same key,
    /// through respawns; like [`Worker`](Route::Worker) otherwise.
    Key(u64),
}

/// How the pool picks a worker for an untargeted submission ([`Route::Any`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Routing {
    /// The live worker with room that holds the fewest unfinished tasks, ties broken in
    /// rotation (so equal loads still spread evenly). A submission waits, or is refused as
    /// full, only when every live worker is full: a task never queues behind a busy worker
    /// while another has room.
    #[default]
    LeastLoaded,
    /// Strict rotation over the live workers, Looppool's policy: of `k` submissions each of
    /// `n` workers gets `⌊k/n⌋` or `⌈k/n⌉`, and a submission waits for the next worker in turn
    /// when it is full, whoever else has room.
    RoundRobin,
}

/// Why the state refused a submission. Nothing was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The chosen worker already holds `capacity` unfinished tasks.
    #[error("worker {worker} already holds its capacity of unfinished tasks")]
    Full {
        /// The worker that was full.
        worker: usize,
    },
    /// The pool is stopping or stopped.
    #[error("the pool is stopping and accepts no new tasks")]
    Closed,
    /// A targeted submission named a worker number outside the pool.
    #[error("there is no worker {worker} in a pool of {size}")]
    NoSuchWorker {
        /// The worker number asked for.
        worker: usize,
        /// The number of workers in the pool.
        size: usize,
    },
    /// A targeted submission named a worker that has exited and will not be replaced.
    #[error("worker {worker} has exited")]
    WorkerExited {
        /// The worker number asked for.
        worker: usize,
    },
    /// Every worker has exited.
    #[error("no worker is alive")]
    NoLiveWorkers,
    /// The worker (or, round-robin, every worker) is being replaced or retired: a waiting
    /// submission waits for the replacement.
    #[error("worker {worker} is being replaced")]
    Replacing {
        /// The worker to wait for.
        worker: usize,
    },
    /// In a pool of members that come and go (`looppool-nats`): no member is in the pool.
    #[error("no member is in the pool")]
    NoMembers,
    /// In a pool of members: the member a targeted submission named is not in the pool.
    #[error("the member asked for is not in the pool")]
    UnknownMember,
}

/// A worker broke the protocol; the driver ends its link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// The worker emitted more outputs than its result credit allows.
    #[error("worker {worker} emitted an output beyond its result credit of {credit}")]
    CreditExceeded {
        /// The offending worker.
        worker: usize,
        /// Its result credit.
        credit: usize,
    },
    /// The worker reported the end of a task it does not hold.
    #[error("worker {worker} reported the end of task {task}, which it does not hold")]
    UnknownTask {
        /// The offending worker.
        worker: usize,
        /// The task id it named.
        task: TaskId,
    },
    /// The worker emitted an output for a task it does not hold (another worker's, or one
    /// that has ended).
    #[error("worker {worker} emitted an output for task {task}, which it does not hold")]
    ForeignOutput {
        /// The offending worker.
        worker: usize,
        /// The task id it named.
        task: TaskId,
    },
    /// The worker said goodbye while still holding tasks, or before being asked to stop.
    #[error("worker {worker} said goodbye {why}")]
    EarlyBye {
        /// The offending worker.
        worker: usize,
        /// What was wrong.
        why: &'static str,
    },
    /// The worker sent a frame that is out of place in its current state.
    #[error("worker {worker} sent an unexpected {what}")]
    Unexpected {
        /// The offending worker.
        worker: usize,
        /// What it sent.
        what: &'static str,
    },
}

/// Something the driver must write to a worker's link, in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit<P> {
    /// A task for the worker.
    Task {
        /// Its id.
        id: TaskId,
        /// Its encoded payload.
        payload: P,
    },
    /// Return `n` result credits to the worker.
    Ack(u32),
    /// Cancel task `id`: the worker drops it and reports it ended.
    Cancel {
        /// The task.
        id: TaskId,
    },
    /// The poison pill.
    Stop,
}

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepting tasks.
    Running,
    /// Refusing new tasks and draining; workers past `deadline` are killed.
    Stopping {
        /// When stragglers get killed.
        deadline: Instant,
    },
    /// Every worker has exited after a stop.
    Stopped,
}

/// A decision of the state that the driver carries out, drained with
/// [`poll_event`](super::PoolState::poll_event) after each input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Kill the current incarnation of `worker`.
    Kill {
        /// The worker to kill.
        worker: usize,
        /// Why.
        cause: KillCause,
    },
    /// Launch a replacement for the dead `worker` after `after` (a backoff, or none).
    Relaunch {
        /// The worker number to relaunch.
        worker: usize,
        /// How long to wait first; a stop ends the wait.
        after: Duration,
    },
    /// `worker` failed quickly `failures` times: it is not relaunched before `retry_at`.
    GaveUp {
        /// The worker number given up.
        worker: usize,
        /// Quick failures within the window.
        failures: u32,
        /// When to ask [`revive`](super::PoolState::revive) again.
        retry_at: Instant,
    },
    /// Task `id`, last held by `worker`, ended as lost.
    Lost {
        /// The worker that held it (or, for a retry that could not be placed, the one whose
        /// death it was retried for).
        worker: usize,
        /// The task.
        id: TaskId,
        /// Why it was not retried.
        why: Loss,
    },
    /// Task `id`, held by `from` when it died, was accepted again by `to` (a retry): the
    /// driver writes it out under the same id.
    Retried {
        /// The task.
        id: TaskId,
        /// The worker that died holding it.
        from: usize,
        /// The worker that holds it now.
        to: usize,
    },
    /// Task `id`, held by `worker` (or waiting for a retry after `worker` died), reached its
    /// deadline: it is cancelled, as by [`handle_cancel`](super::PoolState::handle_cancel),
    /// and ends as timed out.
    Expired {
        /// The worker that held it.
        worker: usize,
        /// The task.
        id: TaskId,
    },
    /// `worker` began retiring: it takes no new tasks, and gets the poison pill behind what it
    /// holds; its replacement takes its number.
    Retiring {
        /// The worker.
        worker: usize,
        /// Why.
        why: Retirement,
    },
}

/// Why the state asks for a worker to be killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KillCause {
    /// It was still alive when the stop deadline passed.
    StopDeadline,
    /// The pool was killed ([`kill_all`](super::PoolState::kill_all)).
    PoolKilled,
    /// Its event loop did not turn for `silent` while it held tasks.
    Stalled {
        /// How long it had been silent.
        silent: Duration,
    },
    /// It did not drop cancelled task `task` within the cancel grace (CPU-bound code that
    /// never yields). The other tasks it held are retried, whatever their retries.
    CancelIgnored {
        /// The cancelled task.
        task: TaskId,
    },
}

/// Why a task held by a dead worker was not run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Loss {
    /// It was held by the worker when it died, and is not retried (its retries are spent, the
    /// pool is stopping, or it was a sticky replay).
    Died,
    /// It was waiting for a worker to retry it on when a stop began.
    Stopped,
    /// No worker can take its retry.
    Unroutable(Refusal),
}

/// Why a worker retires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retirement {
    /// It was asked to ([`handle_retire`](super::PoolState::handle_retire)).
    Requested,
    /// It ended this many tasks (the recycling limit).
    Tasks(u64),
    /// Its resident memory passed the limit.
    Memory {
        /// What it used.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
}
