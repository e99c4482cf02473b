//! The vocabulary of the state: task ids, routes, refusals, protocol violations, what to
//! transmit, and the pool's phase.

use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

/// The identifier the pool gives each accepted task; unique within a pool.
pub type TaskId = u64;

/// A map keyed by task id. Ids are handed out in sequence and never chosen by a peer, so a
/// multiplicative hash spreads them well and costs a fraction of SipHash on the per-task path.
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
    /// The next live worker in round-robin order.
    Any,
    /// Worker number `k`.
    Worker(usize),
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
