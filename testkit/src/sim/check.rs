//! Property tests of a user's own worker in the simulated pool: random scripts of submissions,
//! targeted submissions, broadcasts, worker kills, naps and stops, against a prompt or a slow
//! reader, on a seeded schedule and a fake clock. The pool's own promises are checked after every
//! step and at the end; then the user's property is checked on what the run did; a failure is
//! shrunk to a minimal script.

use super::script::{Ran, Reader, Run, Step};
use super::{Sim, Stall};
use futures_util::future::{select, Either};
use futures_util::FutureExt;
use looppool_core::{
    Delivery, Exit, Pool, Runtime, StartMethod, SubmitError, TaskError, TaskHandle, TaskId, Worker,
};
use proptest::prelude::*;
use proptest::strategy::BoxedStrategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
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
        let mut runner = TestRunner::new(Config {
            cases: self.cases,
            failure_persistence: None,
            ..Config::default()
        });
        let outcome = runner.run(&scripts, |(steps, reader, seed)| {
            let run = self
                .run(&steps, reader, seed)
                .map_err(TestCaseError::fail)?;
            property(&run)
        });
        match outcome {
            Ok(()) => {}
            Err(TestError::Fail(reason, (steps, reader, seed))) => panic!(
                "pool check failed: {reason}\nminimal failing script (seed {seed}, reader \
                 {reader:?}):\n{steps:#?}"
            ),
            Err(TestError::Abort(reason)) => panic!("pool check aborted: {reason}"),
        }
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

    async fn script(
        &self,
        sim: Sim,
        steps: Vec<Step<W::Task>>,
        reader: Reader,
    ) -> Result<Run<W>, String> {
        let rt: Arc<dyn Runtime> = Arc::new(sim.clone());
        let pool = Pool::<W>::builder(rt.clone())
            .start_method(StartMethod::Thread)
            .worker_runtime(rt.clone())
            .workers(self.workers)
            .capacity(self.capacity)
            .result_credit(self.credit)
            .concurrency(self.concurrency)
            .retries(self.retries)
            .stop_timeout(self.stop_timeout)
            // Periodic reports would keep simulated time moving and hide a deadlock.
            .stats_interval(None)
            .start()
            .await
            .map_err(|e| format!("start: {e}"))?;
        let seen = Arc::new(Mutex::new(Vec::<(Option<TaskId>, W::Output)>::new()));
        let (read_all, reader_done) = futures_channel::oneshot::channel::<()>();
        {
            let (outputs, seen, sim) = (pool.outputs(), seen.clone(), sim.clone());
            rt.spawn(Box::pin(async move {
                while let Some(d) = outputs.recv().await {
                    let d: Delivery<W::Output> = d;
                    seen.lock().unwrap().push((d.task_id(), d.value().clone()));
                    if let Reader::Slow(ms) = reader {
                        sim.sleep(Duration::from_millis(ms.into())).await;
                    }
                    drop(d);
                }
                let _ = read_all.send(());
            }));
        }

        let mut accepted: Vec<(TaskHandle<W::Error>, W::Task)> = Vec::new();
        let (mut killed, mut stop_begun) = (false, false);
        let (stop_tx, mut stop_rx) = futures_channel::oneshot::channel();
        let mut stop_tx = Some(stop_tx);
        let n = self.workers;
        for step in steps {
            let give_up = || sim.sleep(Duration::from_millis(50));
            let kind = step_kind(&step);
            let placed = match step {
                Step::Submit(task) | Step::SubmitTo(_, task) | Step::Broadcast(task) => {
                    let placing = match kind {
                        Kind::Any => pool
                            .submit(task.clone())
                            .map(|r| r.map(|h| vec![h]))
                            .boxed(),
                        Kind::To(k) => pool
                            .submit_to(k % n, task.clone())
                            .map(|r| r.map(|h| vec![h]))
                            .boxed(),
                        Kind::All => pool.broadcast(task.clone()).boxed(),
                    };
                    match select(placing, give_up()).await {
                        Either::Left((r, _)) => Some((r, task)),
                        Either::Right(_) => None,
                    }
                }
                Step::Kill(k) => {
                    pool.kill_worker(k % n);
                    killed = true;
                    None
                }
                Step::Nap(ms) => {
                    sim.sleep(Duration::from_millis(ms.into())).await;
                    None
                }
                Step::Stop => {
                    if let Some(tx) = stop_tx.take() {
                        stop_begun = true;
                        let pool = pool.clone();
                        rt.spawn(Box::pin(async move {
                            let _ = tx.send(pool.stop().await);
                        }));
                    }
                    None
                }
            };
            match placed {
                Some((Ok(handles), task)) => {
                    accepted.extend(handles.into_iter().map(|h| (h, task.clone())))
                }
                Some((Err(SubmitError::Closed(_)), _)) if stop_begun => {}
                Some((Err(SubmitError::Unroutable(..)), _)) if killed => {}
                Some((Err(e), _)) => return Err(format!("refused: {e}")),
                None => {}
            }
            // After every step: no worker holds more than its capacity, and every output
            // belongs to an accepted task or to none.
            for w in pool.stats().workers {
                if w.held > self.capacity {
                    return Err(format!(
                        "worker {} holds {} tasks, over its capacity of {}",
                        w.worker, w.held, self.capacity
                    ));
                }
            }
            let ids: Vec<TaskId> = accepted.iter().map(|(h, _)| h.id()).collect();
            if let Some((task, _)) = seen
                .lock()
                .unwrap()
                .iter()
                .find(|(t, _)| t.is_some_and(|t| !ids.contains(&t)))
            {
                return Err(format!("an output for task {task:?}, never accepted"));
            }
        }

        let stopped = pool.stop().await;
        if stop_begun {
            let first = (&mut stop_rx)
                .await
                .map_err(|_| "the background stop vanished")?;
            if first != stopped {
                return Err(format!("two stops disagree: {first:?} and {stopped:?}"));
            }
        }
        reader_done.await.map_err(|_| "the reader vanished")?;
        if stopped.exits().contains(&Exit::Unknown) {
            return Err(format!("a worker was not reaped: {:?}", stopped.exits()));
        }
        let mut by_task: BTreeMap<Option<TaskId>, Vec<W::Output>> = BTreeMap::new();
        for (task, value) in seen.lock().unwrap().drain(..) {
            by_task.entry(task).or_default().push(value);
        }
        let mut tasks = Vec::new();
        for (mut handle, task) in accepted {
            let id = handle.id();
            let ended = (&mut handle)
                .now_or_never()
                .ok_or(format!("task {id} had not ended when stop returned"))?;
            if matches!(ended, Err(TaskError::Lost { .. }))
                && !killed
                && stopped.killed().is_empty()
            {
                return Err(format!("task {id} was lost, with no worker killed"));
            }
            tasks.push(Ran {
                id,
                task,
                worker: handle.worker(),
                ended,
                outputs: by_task.remove(&Some(id)).unwrap_or_default(),
                attempts: handle.attempts(),
            });
        }
        Ok(Run {
            tasks,
            unsolicited: by_task.remove(&None).unwrap_or_default(),
            killed,
        })
    }
}

enum Kind {
    Any,
    To(usize),
    All,
}

fn step_kind<T>(step: &Step<T>) -> Kind {
    match step {
        Step::SubmitTo(k, _) => Kind::To(*k),
        Step::Broadcast(_) => Kind::All,
        _ => Kind::Any,
    }
}
