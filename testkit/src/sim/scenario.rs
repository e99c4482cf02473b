//! Whole pools in the simulation: random scripts of submissions, kills and stops against
//! consumers of every speed, checked for the pool's promises.

use super::{Sim, Stall};
use futures_util::future::{select, Either};
use futures_util::FutureExt;
use looppool_core::{
    async_trait, BoxError, Context, Delivery, Exit, Failure, Pool, Runtime, StartMethod,
    SubmitError, TaskError, TaskHandle, Worker,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a simulated worker does with a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Job {
    /// Emit `0..n`.
    Emit(u8),
    /// Fail.
    Fail,
    /// Sleep this many simulated milliseconds, then emit `0`.
    Nap(u16),
}

/// The simulated worker.
#[derive(Debug)]
pub struct Napper;

#[async_trait(?Send)]
impl Worker for Napper {
    type Task = Job;
    type Output = u8;
    type Error = Failure;

    fn name() -> &'static str {
        "looppool-testkit/napper"
    }

    async fn init(_: &Context<u8>) -> Result<Self, BoxError> {
        Ok(Napper)
    }

    async fn process(&self, job: Job, ctx: &Context<u8>) -> Result<(), Failure> {
        match job {
            Job::Emit(n) => {
                for i in 0..n {
                    ctx.put(i).await?;
                }
            }
            Job::Fail => return Err(Failure::msg("refused")),
            Job::Nap(ms) => {
                Sim::current().sleep(Duration::from_millis(ms.into())).await;
                ctx.put(0).await?;
            }
        }
        Ok(())
    }
}

/// How the parent's consumer treats outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// Takes and acknowledges each output at once.
    Prompt,
    /// Waits this many simulated milliseconds before acknowledging each.
    Slow(u16),
    /// Takes outputs and never acknowledges them until the pool has stopped.
    Never,
}

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Round-robin submission, given up after 50 simulated ms without room.
    Submit(Job),
    /// Targeted submission, given up likewise.
    SubmitTo(usize, Job),
    /// A broadcast, given up likewise.
    Broadcast(Job),
    /// Kill a worker.
    Kill(usize),
    /// Begin a stop in the background, racing whatever follows.
    Stop,
    /// Let simulated time pass.
    Nap(u16),
}

/// A pool, a consumer and a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Workers.
    pub workers: usize,
    /// Task capacity per worker.
    pub capacity: usize,
    /// Result credit per worker.
    pub credit: usize,
    /// Tasks running at once per worker.
    pub concurrency: usize,
    /// Times a lost task is sent again.
    pub retries: u32,
    /// Outputs per worker a stop queues past the credit.
    pub stop_backlog: usize,
    /// Whether dead workers are relaunched (by the default restart policy).
    pub respawn: bool,
    /// Retire each worker after it ended this many tasks (recycling; only with respawn, which
    /// brings the replacement).
    pub recycle_after: Option<u64>,
    /// The consumer.
    pub consumer: Consumer,
    /// The script.
    pub ops: Vec<Op>,
}

fn job() -> impl Strategy<Value = Job> {
    prop_oneof![4 => (0u8..6).prop_map(Job::Emit), 1 => Just(Job::Fail), 2 => (0u16..300).prop_map(Job::Nap)]
}

/// Scenarios of 1 to 3 workers and up to `max_ops` steps.
pub fn scenarios(max_ops: usize) -> impl Strategy<Value = Scenario> {
    let op = prop_oneof![
        8 => job().prop_map(Op::Submit),
        2 => (0usize..3, job()).prop_map(|(k, j)| Op::SubmitTo(k, j)),
        1 => job().prop_map(Op::Broadcast),
        1 => (0usize..3).prop_map(Op::Kill),
        1 => Just(Op::Stop),
        2 => (0u16..200).prop_map(Op::Nap),
    ];
    let consumer = prop_oneof![
        3 => Just(Consumer::Prompt),
        2 => (1u16..50).prop_map(Consumer::Slow),
        1 => Just(Consumer::Never),
    ];
    let shape = (
        1usize..=3,
        1usize..=3,
        1usize..=3,
        1usize..=2,
        0u32..=2,
        0usize..=3,
    );
    let lifecycle = (any::<bool>(), prop::option::weighted(0.3, 1u64..=4));
    (
        shape,
        lifecycle,
        consumer,
        prop::collection::vec(op, 0..max_ops),
    )
        .prop_map(
            |(
                (workers, capacity, credit, concurrency, retries, stop_backlog),
                (respawn, recycle_after),
                consumer,
                ops,
            )| Scenario {
                workers,
                capacity,
                credit,
                concurrency,
                retries,
                stop_backlog,
                respawn,
                recycle_after: recycle_after.filter(|_| respawn),
                consumer,
                ops,
            },
        )
}

/// What a run did, in order: compared between runs of the same seed.
pub type Trace = Vec<String>;

/// The stop timeout in the scenarios: long enough for every job, short next to the limit.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a simulated run may last.
pub const LIMIT: Duration = Duration::from_secs(3_600);

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Runs `scenario` with the schedule `seed` picks and checks the pool's promises; returns the
/// trace of what happened.
pub fn run(scenario: &Scenario, seed: u64, stop_timeout: Duration) -> Result<Trace, String> {
    let sim = Sim::new();
    let script = script(sim.clone(), scenario.clone(), stop_timeout);
    match sim.run(seed, LIMIT, script) {
        Ok(result) => result,
        Err(Stall::Deadlock { at, pending }) => {
            Err(format!("deadlock at {at:?} with {pending} tasks pending"))
        }
        Err(Stall::TimeLimit(limit)) => {
            Err(format!("still running after {limit:?} of simulated time"))
        }
    }
}

async fn script(sim: Sim, s: Scenario, stop_timeout: Duration) -> Result<Trace, String> {
    let rt: Arc<dyn Runtime> = Arc::new(sim.clone());
    let mut builder = Pool::<Napper>::builder(rt.clone());
    if let Some(tasks) = s.recycle_after {
        builder = builder.recycle_after_tasks(tasks);
    }
    let pool = builder
        .respawn(s.respawn)
        .start_method(StartMethod::Thread)
        .worker_runtime(rt.clone())
        .workers(s.workers)
        .capacity(s.capacity)
        .result_credit(s.credit)
        .concurrency(s.concurrency)
        .retries(s.retries)
        .stop_backlog(s.stop_backlog)
        .stop_timeout(stop_timeout)
        // Periodic reports would keep simulated time moving and hide a deadlock from the
        // executor's detection.
        .stats_interval(None)
        .start()
        .await
        .map_err(|e| format!("start: {e}"))?;
    let pool = Arc::new(pool);
    let mut trace = Trace::new();

    // The consumer, in the background: records every output it takes.
    let seen = Arc::new(Mutex::new(Vec::<(Option<u64>, u8)>::new()));
    let held = Arc::new(Mutex::new(Vec::<Delivery<u8>>::new()));
    let (consumer_done, consumer_finished) = futures_channel::oneshot::channel::<()>();
    {
        let (outputs, seen, held, sim) = (pool.outputs(), seen.clone(), held.clone(), sim.clone());
        let consumer = s.consumer;
        rt.spawn(Box::pin(async move {
            while let Some(d) = outputs.recv().await {
                seen.lock().unwrap().push((d.task_id(), *d));
                match consumer {
                    Consumer::Prompt => drop(d),
                    Consumer::Slow(ms) => {
                        sim.sleep(Duration::from_millis(ms.into())).await;
                        drop(d);
                    }
                    Consumer::Never => held.lock().unwrap().push(d),
                }
            }
            let _ = consumer_done.send(());
        }));
    }

    let mut accepted: Vec<(TaskHandle, Job)> = Vec::new();
    let (mut killed, mut stop_begun) = (false, false);
    let (stop_tx, mut stop_rx) = futures_channel::oneshot::channel();
    let mut stop_tx = Some(stop_tx);
    for op in &s.ops {
        let give_up = || sim.sleep(Duration::from_millis(50));
        let placed = match op {
            Op::Submit(job) | Op::SubmitTo(_, job) => {
                let submit = match op {
                    Op::SubmitTo(k, _) => pool.submit_to(k % s.workers, job.clone()).boxed(),
                    _ => pool.submit(job.clone()).boxed(),
                };
                match select(submit, give_up()).await {
                    Either::Left((r, _)) => Some(r.map(|h| vec![(h, job.clone())])),
                    Either::Right(_) => None,
                }
            }
            Op::Broadcast(job) => {
                match select(pin!(pool.broadcast(job.clone())), give_up()).await {
                    Either::Left((r, _)) => {
                        Some(r.map(|hs| hs.into_iter().map(|h| (h, job.clone())).collect()))
                    }
                    Either::Right(_) => None,
                }
            }
            Op::Kill(k) => {
                pool.kill_worker(k % s.workers);
                killed = true;
                trace.push(format!("kill {}", k % s.workers));
                None
            }
            Op::Stop => {
                if let Some(tx) = stop_tx.take() {
                    stop_begun = true;
                    let pool = pool.clone();
                    rt.spawn(Box::pin(async move {
                        let _ = tx.send(pool.stop().await);
                    }));
                }
                None
            }
            Op::Nap(ms) => {
                sim.sleep(Duration::from_millis((*ms).into())).await;
                None
            }
        };
        match placed {
            Some(Ok(handles)) => {
                for (h, job) in handles {
                    trace.push(format!("accepted {} on {} ({job:?})", h.id(), h.worker()));
                    accepted.push((h, job));
                }
            }
            Some(Err(SubmitError::Closed(_))) => {
                ensure!(stop_begun, "refused as closed, but no stop began")
            }
            Some(Err(SubmitError::Unroutable(..))) => {
                ensure!(killed, "no worker to route to, but none was killed")
            }
            Some(Err(e)) => return Err(format!("unexpected refusal: {e}")),
            None => {}
        }
    }

    let stopped = pool.stop().await;
    if stop_begun {
        let first = (&mut stop_rx)
            .await
            .map_err(|_| "the background stop vanished")?;
        ensure!(
            first == stopped,
            "two stops disagree: {first:?} and {stopped:?}"
        );
    }
    trace.push(format!(
        "stopped at {:?}: killed {:?}",
        sim.elapsed(),
        stopped.killed()
    ));
    held.lock().unwrap().clear();
    // Stop returns once every output is in the stream; the consumer takes the last ones and
    // sees the stream end.
    consumer_finished
        .await
        .map_err(|_| "the consumer vanished")?;
    trace.push(format!(
        "outputs in arrival order: {:?}",
        seen.lock().unwrap()
    ));

    // Every accepted task has ended by the time stop returned.
    let mut outcomes = Vec::new();
    for (mut h, job) in accepted {
        let id = h.id();
        let ended = (&mut h)
            .now_or_never()
            .ok_or(format!("task {id} had not ended when stop returned"))?;
        trace.push(format!(
            "task {id}: {ended:?} after {} attempts",
            h.attempts()
        ));
        outcomes.push((id, job, ended, h.attempts()));
    }
    // No worker outlives its pool: each one's exit was collected.
    ensure!(
        stopped.exits().iter().all(|e| *e != Exit::Unknown),
        "stop returned before every worker was reaped: {:?}",
        stopped.exits()
    );
    let lost_allowed = killed || !stopped.killed().is_empty();
    ensure!(
        stopped.killed().is_empty() || s.consumer == Consumer::Never,
        "a stop with a consumer that acknowledges had to kill {:?}",
        stopped.killed()
    );
    let mut by_task: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (task, value) in seen.lock().unwrap().iter() {
        by_task
            .entry(task.ok_or("an unsolicited output")?)
            .or_default()
            .push(*value);
    }
    for (id, job, ended, attempts) in outcomes {
        let outputs = by_task.remove(&id).unwrap_or_default();
        // A retried task may have emitted part of its outputs before its worker died: the
        // last attempt's complete outputs come after them, under the same id.
        let ends_with = |expected: &[u8]| match attempts {
            1 => outputs == expected,
            _ => outputs.ends_with(expected),
        };
        match (&job, &ended) {
            (Job::Emit(n), Ok(())) => ensure!(
                ends_with(&(0..*n).collect::<Vec<_>>()),
                "task {id} ({job:?}) completed after {attempts} attempts with outputs {outputs:?}"
            ),
            (Job::Nap(_), Ok(())) => {
                ensure!(ends_with(&[0]), "task {id} napped with outputs {outputs:?}")
            }
            (Job::Fail, Err(TaskError::Failed(failure))) => {
                ensure!(failure.message() == "refused", "failure {failure:?}")
            }
            (_, Err(TaskError::Lost { .. })) => {
                ensure!(lost_allowed, "task {id} ({job:?}) lost with nothing killed")
            }
            _ => return Err(format!("task {id} ({job:?}) ended with {ended:?}")),
        }
    }
    ensure!(
        by_task.is_empty(),
        "outputs for tasks never accepted: {by_task:?}"
    );
    Ok(trace)
}
