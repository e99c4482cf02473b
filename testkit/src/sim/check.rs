//! Property tests of a user's own worker in the simulated pool: random scripts of submissions,
//! targeted submissions, broadcasts, worker kills, naps and stops, against a prompt or a slow
//! reader, on a seeded schedule and a fake clock. The pool's own promises are checked after every
//! step and at the end; then the user's property is checked on what the run did; a failure is
//! shrunk to a minimal script.

mod play;

use super::script::{Reader, Run, Step};
use super::{Sim, Stall};
use looppool_core::Worker;
use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use proptest::test_runner::{Config, Reason, RngSeed, TestCaseError, TestError, TestRunner};
use std::fmt::Debug;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// A property test of worker `W` in simulated pools.
///
/// ```
/// use looppool_core::{async_trait, BoxError, Context, Failure, Worker};
/// use looppool_testkit::sim::PoolCheck;
/// use proptest::prelude::*;
/// use std::time::Duration;
///
/// /// Emits `0..n` after a nap on the worker's clock.
/// struct Counter;
///
/// #[async_trait(?Send)]
/// impl Worker for Counter {
///     type Task = u8;
///     type Output = u8;
///     type Error = Failure;
///
///     async fn init(_: &Context<u8>) -> Result<Self, BoxError> {
///         Ok(Counter)
///     }
///
///     async fn process(&self, n: u8, ctx: &Context<u8>) -> Result<(), Failure> {
///         // The context's timer: simulated time in the check, real time in production.
///         ctx.sleep(Duration::from_millis(u64::from(n) * 10)).await;
///         for i in 0..n {
///             ctx.put(i).await?;
///         }
///         Ok(())
///     }
/// }
///
/// PoolCheck::<Counter>::new(0u8..5).cases(32).check(|run| {
///     for ran in &run.tasks {
///         if ran.ended.is_ok() && ran.attempts == 1 {
///             let expected: Vec<u8> = (0..ran.task).collect();
///             prop_assert_eq!(&ran.outputs, &expected, "task {}", ran.id);
///         }
///     }
///     Ok(())
/// });
/// ```
pub struct PoolCheck<W: Worker> {
    tasks: BoxedStrategy<W::Task>,
    workers: usize,
    capacity: usize,
    credit: usize,
    concurrency: usize,
    retries: u32,
    cases: u32,
    max_steps: usize,
    stop_timeout: Duration,
    rng_seed: Option<u64>,
}

impl<W: Worker> Debug for PoolCheck<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCheck")
            .field("workers", &self.workers)
            .field("cases", &self.cases)
            .finish_non_exhaustive()
    }
}

impl<W> PoolCheck<W>
where
    W: Worker,
    W::Task: Clone + Debug,
    W::Output: Clone + Debug,
{
    /// A check whose scripts draw their tasks from `tasks`: 2 workers, capacity 2, result credit
    /// 2, one task at a time per worker, no retries, 64 cases of up to 24 steps.
    pub fn new(tasks: impl Strategy<Value = W::Task> + 'static) -> Self {
        PoolCheck {
            tasks: tasks.boxed(),
            workers: 2,
            capacity: 2,
            credit: 2,
            concurrency: 1,
            retries: 0,
            cases: 64,
            max_steps: 24,
            stop_timeout: Duration::from_secs(30),
            rng_seed: None,
        }
    }

    /// Workers per pool.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Unfinished tasks per worker.
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// Result credit per worker.
    pub fn result_credit(mut self, n: usize) -> Self {
        self.credit = n;
        self
    }

    /// Tasks running at once per worker.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Times a task lost with a killed worker is sent again.
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// How many scripts to run.
    pub fn cases(mut self, n: u32) -> Self {
        self.cases = n;
        self
    }

    /// The longest script.
    pub fn max_steps(mut self, n: usize) -> Self {
        self.max_steps = n;
        self
    }

    /// The simulated stop timeout: a worker still busy then is killed.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Draws the scripts from a generator seeded with `seed`, so a check runs the same cases
    /// every time. Without it the seed is random, or read from `PROPTEST_RNG_SEED`.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.rng_seed = Some(seed);
        self
    }

    /// Runs the scripts; checks the pool's promises in each, then `property` on what it did.
    ///
    /// # Panics
    ///
    /// On the first failure, with the reason and the smallest script (steps, reader, seed) that
    /// still fails.
    pub fn check(&self, property: impl Fn(&Run<W>) -> Result<(), TestCaseError>) {
        let step = prop_oneof![
            6 => self.tasks.clone().prop_map(Step::Submit),
            2 => (0usize..8, self.tasks.clone()).prop_map(|(k, t)| Step::SubmitTo(k, t)),
            1 => self.tasks.clone().prop_map(Step::Broadcast),
            1 => (0usize..8).prop_map(Step::Kill),
            2 => (0u16..300).prop_map(Step::Nap),
            1 => Just(Step::Stop),
        ];
        let reader = prop_oneof![
            2 => Just(Reader::Prompt),
            1 => (1u16..50).prop_map(Reader::Slow),
        ];
        let scripts = (
            prop::collection::vec(step, 0..=self.max_steps),
            reader,
            any::<u64>(),
        );
        let defaults = Config::default();
        let mut runner = TestRunner::new(Config {
            cases: self.cases,
            failure_persistence: None,
            rng_seed: self.rng_seed.map_or(defaults.rng_seed, RngSeed::Fixed),
            ..defaults
        });
        let outcome = runner.run(&scripts, |(steps, reader, seed)| {
            let run = self
                .run(&steps, reader, seed)
                .map_err(TestCaseError::fail)?;
            property(&run)
        });
        match outcome {
            Ok(()) => {}
            Err(TestError::Fail(reason, (steps, reader, seed))) => {
                let (reason, steps, reader) = self.minimize(reason, steps, reader, seed, &property);
                panic!(
                    "pool check failed: {reason}\nminimal failing script (seed {seed}, reader \
                     {reader:?}):\n{steps:#?}"
                )
            }
            Err(TestError::Abort(reason)) => panic!("pool check aborted: {reason}"),
        }
    }

    /// Deletes steps from a shrunk failing script until no single deletion still fails.
    ///
    /// Proptest's shrinking tries each deletion once, in order: a step that could not go while a
    /// later one was there (a kill that moved the failing task elsewhere) stays after that later
    /// one is gone. Repeating the deletions to a fixed point makes the reported script one whose
    /// every step is needed, whatever the random cases were.
    fn minimize(
        &self,
        mut reason: Reason,
        mut steps: Vec<Step<W::Task>>,
        mut reader: Reader,
        seed: u64,
        property: &impl Fn(&Run<W>) -> Result<(), TestCaseError>,
    ) -> (Reason, Vec<Step<W::Task>>, Reader) {
        let fails = |steps: &[Step<W::Task>], reader: Reader| match self.run(steps, reader, seed) {
            Err(pool) => Some(Reason::from(pool)),
            // A property that asserts with `assert!` fails by panicking, as proptest allows.
            Ok(run) => match catch_unwind(AssertUnwindSafe(|| property(&run))) {
                Ok(Err(TestCaseError::Fail(why))) => Some(why),
                // A rejected case (`prop_assume!`) is not a failure.
                Ok(Ok(()) | Err(TestCaseError::Reject(_))) => None,
                Err(panic) => Some(Reason::from(panic_text(&*panic))),
            },
        };
        if reader != Reader::Prompt {
            if let Some(why) = fails(&steps, Reader::Prompt) {
                (reason, reader) = (why, Reader::Prompt);
            }
        }
        let mut i = 0;
        while i < steps.len() {
            let mut fewer = steps.clone();
            fewer.remove(i);
            match fails(&fewer, reader) {
                Some(why) => {
                    (reason, steps) = (why, fewer);
                    i = 0;
                }
                None => i += 1,
            }
        }
        (reason, steps, reader)
    }

    /// Runs one script with the schedule `seed` picks; checks the pool's promises and returns
    /// what the run did.
    pub fn run(
        &self,
        steps: &[Step<W::Task>],
        reader: Reader,
        seed: u64,
    ) -> Result<Run<W>, String> {
        let sim = Sim::new();
        let script = self.script(sim.clone(), steps.to_vec(), reader);
        match sim.run(seed, super::LIMIT, script) {
            Ok(result) => result,
            Err(Stall::Deadlock { at, pending }) => {
                Err(format!("deadlock at {at:?} with {pending} tasks pending"))
            }
            Err(Stall::TimeLimit(limit)) => {
                Err(format!("still running after {limit:?} of simulated time"))
            }
        }
    }
}

/// What a panic said, as far as it can be read.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (_, Some(text)) => text.clone(),
        _ => "a panic".to_owned(),
    }
}
