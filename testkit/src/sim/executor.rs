//! A deterministic, single-threaded runtime for whole pools: seeded scheduling and a fake clock.
//!
//! Every task (the parent's link tasks, the workers' main futures, the test's own script) runs
//! on the calling thread. Each task draws a random priority from a seeded generator, and the
//! ready task with the highest priority runs next; now and then a task draws a new one. So one
//! seed is one interleaving, replayed exactly, and a ready task can be starved for a long
//! stretch while others run (the interleavings that hide lost wake-ups, which picking ready
//! tasks uniformly almost never produces). The clock stands still while
//! anything can run; when nothing can, it jumps to the next timer. If nothing can run and no
//! timer is set while the script is unfinished, the run is a deadlock, reported as such.

use looppool_core::{BoxFuture, BoxIo, LocalBoxFuture, Runtime};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

/// The id of the script's own future among the tasks.
const SCRIPT: usize = usize::MAX;

#[derive(Default)]
struct Shared {
    /// Tasks woken since they were last polled.
    ready: Mutex<BTreeSet<usize>>,
    /// Timers: deadline (time since the epoch), sequence, waker.
    timers: Mutex<Vec<(Duration, u64, Waker)>>,
    /// Simulated time since the epoch.
    clock: Mutex<Duration>,
    seq: AtomicU64,
    /// Futures spawned with `Runtime::spawn`, waiting to join the task list.
    spawned: Mutex<Vec<BoxFuture<()>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("clock", &*lock(&self.clock))
            .field("ready", &lock(&self.ready).len())
            .field("timers", &lock(&self.timers).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

thread_local! {
    /// `!Send` futures (workers' main futures) waiting to join the task list.
    static LOCAL_SPAWNED: RefCell<Vec<LocalBoxFuture<()>>> = const { RefCell::new(Vec::new()) };
    /// The simulation running on this thread, for workers that need its clock.
    static CURRENT: RefCell<Option<Sim>> = const { RefCell::new(None) };
}

/// The simulated [`Runtime`]. Cheap to clone; every clone drives the same simulation.
#[derive(Debug, Clone)]
pub struct Sim {
    shared: Arc<Shared>,
    epoch: Instant,
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

struct TaskWaker {
    id: usize,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        lock(&self.shared.ready).insert(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        lock(&self.shared.ready).insert(self.id);
    }
}

/// A small deterministic generator (SplitMix64), so a seed fixes the schedule.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// Why a simulated run did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stall {
    /// Nothing could run, no timer was set, and the script had not finished.
    Deadlock {
        /// Simulated time when it happened.
        at: Duration,
        /// Tasks still pending.
        pending: usize,
    },
    /// Simulated time passed the limit.
    TimeLimit(Duration),
}

impl Sim {
    /// A new simulation with its clock at zero.
    pub fn new() -> Self {
        Self {
            shared: Arc::default(),
            epoch: Instant::now(),
        }
    }

    /// The simulation running on this thread.
    ///
    /// # Panics
    /// Outside [`Sim::run`].
    pub fn current() -> Sim {
        CURRENT.with(|c| c.borrow().clone().expect("not inside a simulation"))
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        *lock(&self.shared.clock)
    }

    /// Runs `script` and everything it spawns until the script finishes, scheduling ready tasks
    /// in the order `seed` dictates. Fails on a deadlock or once simulated time passes `limit`.
    pub fn run<T>(
        &self,
        seed: u64,
        limit: Duration,
        script: impl Future<Output = T>,
    ) -> Result<T, Stall> {
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
        let result = self.drive(seed, limit, script);
        CURRENT.with(|c| *c.borrow_mut() = None);
        LOCAL_SPAWNED.with(|l| l.borrow_mut().clear());
        result
    }

    fn waker(&self, id: usize) -> Waker {
        Waker::from(Arc::new(TaskWaker {
            id,
            shared: self.shared.clone(),
        }))
    }

    fn drive<T>(
        &self,
        seed: u64,
        limit: Duration,
        script: impl Future<Output = T>,
    ) -> Result<T, Stall> {
        let mut rng = Rng(seed);
        let mut script = std::pin::pin!(script);
        let mut tasks: Vec<Option<LocalBoxFuture<()>>> = Vec::new();
        let mut priority: Vec<usize> = Vec::new();
        let mut script_priority = rng.below(1 << 20);
        lock(&self.shared.ready).insert(SCRIPT);
        loop {
            // New tasks join and get their first poll.
            let spawned: Vec<LocalBoxFuture<()>> = lock(&self.shared.spawned)
                .drain(..)
                .map(|f| f as LocalBoxFuture<()>)
                .chain(LOCAL_SPAWNED.with(|l| std::mem::take(&mut *l.borrow_mut())))
                .collect();
            for future in spawned {
                lock(&self.shared.ready).insert(tasks.len());
                tasks.push(Some(future));
                priority.push(rng.below(1 << 20));
            }
            let ready: Vec<usize> = lock(&self.shared.ready).iter().copied().collect();
            if ready.is_empty() {
                // Nothing can run: let time pass to the next timer, if there is one.
                let mut timers = lock(&self.shared.timers);
                let Some(next) = timers.iter().map(|t| (t.0, t.1)).min() else {
                    return Err(Stall::Deadlock {
                        at: self.elapsed(),
                        pending: tasks.iter().flatten().count(),
                    });
                };
                if next.0 > limit {
                    return Err(Stall::TimeLimit(limit));
                }
                *lock(&self.shared.clock) = next.0;
                let due: Vec<Waker> = {
                    let (due, later): (Vec<_>, Vec<_>) =
                        timers.drain(..).partition(|t| t.0 <= next.0);
                    *timers = later;
                    due.into_iter().map(|t| t.2).collect()
                };
                drop(timers);
                due.into_iter().for_each(Waker::wake);
                continue;
            }
            let prio = |id: usize| {
                if id == SCRIPT {
                    script_priority
                } else {
                    priority[id]
                }
            };
            let id = *ready
                .iter()
                .max_by_key(|&&id| (prio(id), id))
                .expect("a ready task");
            // Now and then the chosen task falls or rises in the order.
            if rng.below(8) == 0 {
                let fresh = rng.below(1 << 20);
                match id {
                    SCRIPT => script_priority = fresh,
                    _ => priority[id] = fresh,
                }
            }
            lock(&self.shared.ready).remove(&id);
            let waker = self.waker(id);
            let mut cx = Context::from_waker(&waker);
            if id == SCRIPT {
                if let Poll::Ready(value) = script.as_mut().poll(&mut cx) {
                    return Ok(value);
                }
            } else if let Some(Some(task)) = tasks.get_mut(id) {
                if task.as_mut().poll(&mut cx).is_ready() {
                    tasks[id] = None;
                }
            }
        }
    }
}

/// A simulated timer.
struct Sleep {
    shared: Arc<Shared>,
    deadline: Duration,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if *lock(&self.shared.clock) >= self.deadline {
            return Poll::Ready(());
        }
        let seq = self.shared.seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.timers).push((self.deadline, seq, cx.waker().clone()));
        Poll::Pending
    }
}

impl Runtime for Sim {
    fn spawn(&self, future: BoxFuture<()>) {
        lock(&self.shared.spawned).push(future);
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        Box::pin(Sleep {
            shared: self.shared.clone(),
            deadline: self.elapsed() + duration,
        })
    }

    fn wrap_unix(&self, _: UnixStream) -> io::Result<BoxIo> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a simulation has no sockets: use StartMethod::Thread",
        ))
    }

    fn block_on_local(&self, main: LocalBoxFuture<()>) {
        // The worker's "runtime" is this simulation: its main future joins the task list.
        LOCAL_SPAWNED.with(|l| l.borrow_mut().push(main));
    }

    fn spawn_worker_thread(&self, _name: String, body: Box<dyn FnOnce() + Send>) -> io::Result<()> {
        body();
        Ok(())
    }

    fn now(&self) -> Instant {
        self.epoch + self.elapsed()
    }

    fn worker_flusher(&self) -> bool {
        // Simulated tasks never hold a loop in real time; a flusher would only add a thread
        // whose timing differs from run to run.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_jumps_to_the_next_timer_only_when_nothing_can_run() {
        let sim = Sim::new();
        let s = sim.clone();
        let order = sim
            .run(1, Duration::from_secs(10), async move {
                let (a, b) = futures_util::future::join(
                    async {
                        s.sleep(Duration::from_millis(30)).await;
                        s.elapsed()
                    },
                    async {
                        s.sleep(Duration::from_millis(10)).await;
                        s.elapsed()
                    },
                )
                .await;
                (a, b)
            })
            .unwrap();
        assert_eq!(
            order,
            (Duration::from_millis(30), Duration::from_millis(10))
        );
    }

    #[test]
    fn a_script_waiting_on_nothing_is_a_deadlock() {
        let sim = Sim::new();
        let stalled = sim.run(1, Duration::from_secs(1), std::future::pending::<()>());
        assert!(
            matches!(stalled, Err(Stall::Deadlock { .. })),
            "{stalled:?}"
        );
    }

    #[test]
    fn a_script_sleeping_past_the_limit_stops_there() {
        let sim = Sim::new();
        let s = sim.clone();
        let stalled = sim.run(1, Duration::from_secs(1), async move {
            s.sleep(Duration::from_secs(5)).await
        });
        assert_eq!(stalled, Err(Stall::TimeLimit(Duration::from_secs(1))));
    }
}
