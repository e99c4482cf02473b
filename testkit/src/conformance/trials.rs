//! The trials. Each proves one behaviour and fails with a message saying what differed.

use super::capture::{captured, Captured};
use super::{fnv1a, within, Adapter, FailingInit, Out, Outcome, Probe, Refuse, Task};
use futures_util::future::{join_all, select, Either, LocalBoxFuture};
use looppool_core::{
    Builder, CallError, Error, Exit, Fault, Outputs, Pool, PoolStats, StartMethod, SubmitError,
    TaskError, TaskHandle, TaskId,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;

use std::time::Duration;

use faults::*;

/// A trial's body.
pub(super) type Body = fn(StartMethod) -> LocalBoxFuture<'static, Outcome>;

/// Which start methods a trial runs with.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope {
    /// Every one.
    All,
    /// Those that start processes.
    Processes,
    /// Once, with re-exec.
    Once,
}

impl Scope {
    pub(super) fn covers(self, method: StartMethod) -> bool {
        match self {
            Scope::All => true,
            Scope::Processes => method != StartMethod::Thread,
            Scope::Once => method == StartMethod::ReExec,
        }
    }
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

macro_rules! table {
    ($($name:ident: $scope:ident),* $(,)?) => {
        vec![$((stringify!($name), Scope::$scope, (|m| Box::pin($name::<A>(m))) as Body)),*]
    };
}

// After the macros, which it uses.
mod faults;

pub(super) fn all<A: Adapter>() -> Vec<(&'static str, Scope, Body)> {
    table![
        ten_tasks_through_eight_workers_come_back_doubled: All,
        stop_after_k_tasks_ends_every_task_and_delivers_every_output: All,
        a_full_worker_refuses_try_submit_and_submit_waits_for_room: All,
        round_robin_gives_each_of_8_workers_100_of_800_tasks: All,
        a_broadcast_after_k_tasks_reaches_every_worker_once_in_order: All,
        targeted_tasks_reach_their_worker: All,
        errors_and_panics_reach_the_parent_and_the_worker_goes_on: All,
        result_credit_bounds_unacknowledged_outputs_and_loses_nothing: All,
        outputs_are_flushed_before_the_next_cpu_bound_task_starts: All,
        values_that_cannot_be_encoded_are_refused_at_the_call: All,
        a_bad_frame_from_a_worker_ends_only_its_link_with_a_clear_error: All,
        a_protocol_version_mismatch_fails_the_start_clearly: All,
        a_failing_init_hook_fails_the_start_clearly: All,
        stop_racing_submissions_ends_every_accepted_task: All,
        a_killed_worker_loses_its_tasks_with_the_signal_and_others_go_on: Processes,
        dropping_a_pool_leaves_no_worker_process: Processes,
        worker_processes_are_named_ignore_terminal_signals_and_hold_only_their_link: Processes,
        workers_die_with_a_parent_that_is_killed: Processes,
        a_dead_worker_is_replaced_under_its_number_with_its_sticky_state: All,
        a_worker_that_cannot_start_is_given_up_after_the_restart_limit: All,
        a_worker_that_served_is_replaced_however_often_it_is_killed: All,
        stop_kill_and_drop_keep_their_deadlines_while_a_replacement_launches: All,
        a_start_dropped_half_way_leaves_no_process: Processes,
        a_stop_with_nobody_reading_finishes_within_the_stop_backlog: All,
        a_lost_task_is_retried_on_a_live_worker: Processes,
        a_task_past_its_timeout_is_cancelled_and_its_worker_goes_on: All,
        a_worker_stuck_in_cpu_bound_code_is_killed_and_only_its_tasks_are_lost: Processes,
        a_worker_is_recycled_after_its_task_limit_without_losing_a_task: Processes,
        a_worker_over_its_memory_limit_is_recycled: Processes,
        the_stop_deadline_kills_stragglers_and_their_tasks_are_lost: All,
        large_and_small_tasks_arrive_intact_in_order: All,
        workers_started_nice_run_at_that_priority: Processes,
        workers_report_cpu_memory_lag_and_task_counts: All,
        a_blocked_loop_is_reported_with_its_worker_and_tasks: All,
        worker_log_events_and_panics_reach_the_parent_tagged: All,
        thousands_of_tasks_survive_random_worker_kills: Once,
        fork_is_refused_while_the_process_has_threads: Once,
        a_worker_whose_program_outlives_it_is_seen_dead: Processes,
        a_worker_whose_forked_child_outlives_it_is_seen_dead: Processes,
        recycling_under_load_loses_nothing_and_gives_up_nothing: Processes,
        an_output_whose_decoding_panics_ends_only_its_link: All,
        a_pool_with_unread_outputs_is_freed_when_stopped_or_dropped: All,
        an_absurd_report_from_a_worker_is_harmless: All,
        a_frame_that_stops_half_way_ends_its_link_at_the_read_deadline: All,
        an_output_claiming_another_workers_task_ends_the_liars_link: All,
        an_init_that_exits_reports_its_exit_status: Processes,
        lost_tasks_say_what_killed_their_worker: All,
        result_credit_spans_a_workers_incarnations: All,
    ]
}

fn pool<A: Adapter>(method: StartMethod, workers: usize) -> Builder<Probe> {
    builder_of::<A, Probe>(method, workers)
}

/// A builder of worker type `W` with the suite's settings.
fn builder_of<A: Adapter, W: looppool_core::Worker>(
    method: StartMethod,
    workers: usize,
) -> Builder<W> {
    let builder = Pool::builder(A::runtime());
    let builder = match A::worker_runtime() {
        Some(runtime) => builder.worker_runtime(runtime),
        None => builder,
    };
    builder
        .name("conformance")
        .start_method(method)
        .workers(workers)
        .stop_timeout(Duration::from_secs(30))
        .handshake_timeout(Duration::from_secs(30))
}

async fn start(builder: Builder<Probe>) -> Result<Pool<Probe>, String> {
    builder
        .start()
        .await
        .map_err(|e| format!("the pool did not start: {e}"))
}

/// An output as the test saw it: worker, task, value.
type Seen = (usize, Option<TaskId>, Out);

/// Runs `future` while taking (and so acknowledging) every output from `outputs`; returns its
/// result and the outputs taken, including those that arrived before it finished.
async fn draining<T>(outputs: &Outputs<Out>, future: impl Future<Output = T>) -> (T, Vec<Seen>) {
    let mut seen = Vec::new();
    let mut future = pin!(future);
    let value = loop {
        match select(future.as_mut(), pin!(outputs.recv())).await {
            Either::Left((value, _)) => break value,
            Either::Right((Some(d), _)) => seen.push((d.worker(), d.task_id(), d.into_value())),
            Either::Right((None, _)) => break future.await,
        }
    };
    while let Some(d) = outputs.try_recv() {
        seen.push((d.worker(), d.task_id(), d.into_value()));
    }
    (value, seen)
}

async fn all_ok(handles: Vec<TaskHandle>) -> Outcome {
    for (i, r) in join_all(handles).await.into_iter().enumerate() {
        ensure!(r.is_ok(), "task #{i} ended with {r:?}");
    }
    Ok(())
}

async fn stop_gracefully(pool: &Pool<Probe>) -> Outcome {
    let stopped = pool.stop().await;
    ensure!(
        stopped.is_graceful(),
        "the stop was not graceful: {stopped:?}"
    );
    Ok(())
}

async fn ten_tasks_through_eight_workers_come_back_doubled<A: Adapter>(m: StartMethod) -> Outcome {
    let pool = start(pool::<A>(m, 8)).await?;
    let outputs = pool.outputs();
    let mut handles = Vec::new();
    for n in 0..10 {
        handles.push(
            pool.submit(Task::Double(n))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let ids: Vec<TaskId> = handles.iter().map(TaskHandle::id).collect();
    let (ended, seen) = draining(&outputs, all_ok(handles)).await;
    ended?;
    let mut got: Vec<u64> = seen
        .iter()
        .map(|(_, task, out)| match out {
            Out::Doubled(v) if task.is_some_and(|t| ids.contains(&t)) => Ok(*v),
            other => Err(format!("unexpected output {other:?} for task {task:?}")),
        })
        .collect::<Result<_, _>>()?;
    got.sort_unstable();
    ensure!(
        got == (0..10).map(|n| n * 2).collect::<Vec<_>>(),
        "got {got:?}"
    );
    ensure!(
        pool.call(Task::Double(21)).await.ok() == Some(Out::Doubled(42)),
        "call(21) did not give 42"
    );
    stop_gracefully(&pool).await
}

async fn stop_after_k_tasks_ends_every_task_and_delivers_every_output<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    for k in 0..16u64 {
        let pool = start(pool::<A>(m, 2).capacity(16)).await?;
        let outputs = pool.outputs();
        let mut handles = Vec::new();
        for n in 0..k {
            handles.push(
                pool.submit(Task::Double(n))
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        stop_gracefully(&pool).await?;
        for h in handles {
            let id = h.id();
            let ended = futures_util::FutureExt::now_or_never(h);
            ensure!(
                ended == Some(Ok(())),
                "k={k}: after stop, task {id} has {ended:?}"
            );
        }
        let mut delivered = 0;
        while let Some(d) = outputs.recv().await {
            ensure!(
                matches!(d.value(), Out::Doubled(_)),
                "k={k}: unexpected {:?}",
                d.value()
            );
            delivered += 1;
        }
        ensure!(delivered == k, "k={k}: {delivered} outputs delivered");
        let late = pool.try_submit(Task::Double(1));
        ensure!(
            matches!(late, Err(SubmitError::Closed(Task::Double(1)))),
            "k={k}: after stop: {late:?}"
        );
    }
    Ok(())
}

async fn a_full_worker_refuses_try_submit_and_submit_waits_for_room<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 1).capacity(2).concurrency(2).result_credit(1)).await?;
    let outputs = pool.outputs();
    // Two `Hold`s fill the worker; neither can end before the consumer acknowledges an output.
    let held = [pool.try_submit(Task::Hold), pool.try_submit(Task::Hold)];
    let held: Vec<TaskHandle> = held
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    match pool.try_submit(Task::Double(7)) {
        Err(SubmitError::Full(task)) => ensure!(task == Task::Double(7), "handed back {task:?}"),
        other => return Err(format!("expected Full, got {other:?}")),
    }
    let mut waiting = pin!(pool.submit(Task::Double(8)));
    let first = futures_util::poll!(waiting.as_mut());
    ensure!(
        first.is_pending(),
        "submit did not wait for room: {first:?}"
    );
    let (submitted, _) = draining(&outputs, async {
        let handle = waiting.await.map_err(|e| e.to_string())?;
        all_ok(held).await?;
        handle.await.map_err(|e| e.to_string())
    })
    .await;
    submitted?;
    stop_gracefully(&pool).await
}

async fn round_robin_gives_each_of_8_workers_100_of_800_tasks<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 8)).await?;
    let outputs = pool.outputs();
    let (handles, seen) = draining(&outputs, async {
        let mut handles = Vec::new();
        for _ in 0..800 {
            handles.push(pool.submit(Task::WhoAmI).await.map_err(|e| e.to_string())?);
        }
        let by_handle = count(handles.iter().map(TaskHandle::worker));
        all_ok(handles).await?;
        Ok::<_, String>(by_handle)
    })
    .await;
    let by_handle = handles?;
    let mut by_output = BTreeMap::new();
    for (worker, _, out) in &seen {
        ensure!(*out == Out::Worker(*worker), "worker {worker} said {out:?}");
        *by_output.entry(*worker).or_insert(0) += 1;
    }
    let expected: BTreeMap<usize, usize> = (0..8).map(|w| (w, 100)).collect();
    ensure!(
        by_handle == expected,
        "tasks sent per worker: {by_handle:?}"
    );
    ensure!(
        by_output == expected,
        "tasks processed per worker: {by_output:?}"
    );
    stop_gracefully(&pool).await
}

fn count(workers: impl Iterator<Item = usize>) -> BTreeMap<usize, usize> {
    let mut counts = BTreeMap::new();
    for w in workers {
        *counts.entry(w).or_insert(0) += 1;
    }
    counts
}

/// Broadcasts `Get` and returns each worker's answer, checking each answered exactly once.
async fn broadcast_get(
    pool: &Pool<Probe>,
    outputs: &Outputs<Out>,
) -> Result<BTreeMap<usize, i64>, String> {
    let (ended, seen) = draining(outputs, async {
        let handles = pool.broadcast(Task::Get).await.map_err(|e| e.to_string())?;
        all_ok(handles).await
    })
    .await;
    ended?;
    let mut values = BTreeMap::new();
    for (worker, _, out) in seen {
        match out {
            Out::Value { value, worker: w } if w == worker => {
                ensure!(
                    values.insert(worker, value).is_none(),
                    "worker {worker} answered twice"
                );
            }
            other => return Err(format!("unexpected output {other:?} from worker {worker}")),
        }
    }
    ensure!(
        values.len() == pool.size(),
        "answers from {} of {} workers",
        values.len(),
        pool.size()
    );
    Ok(values)
}

async fn a_broadcast_after_k_tasks_reaches_every_worker_once_in_order<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    for k in 0..16u64 {
        let pool = start(pool::<A>(m, 4).capacity(32)).await?;
        let outputs = pool.outputs();
        // The earlier tasks set other values: a broadcast that overtook any of them would leave
        // that value behind instead of 26.
        let mut handles = Vec::new();
        for n in 0..k {
            handles.push(
                pool.submit(Task::Set(-(n as i64) - 1))
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        handles.extend(
            pool.broadcast(Task::Set(26))
                .await
                .map_err(|e| e.to_string())?,
        );
        let values = broadcast_get(&pool, &outputs).await?;
        ensure!(
            values.values().all(|&v| v == 26),
            "k={k}: values {values:?}"
        );
        let (ended, _) = draining(&outputs, all_ok(handles)).await;
        ended?;
        stop_gracefully(&pool).await?;
    }
    Ok(())
}

async fn targeted_tasks_reach_their_worker<A: Adapter>(m: StartMethod) -> Outcome {
    let n = 4;
    let pool = start(pool::<A>(m, n)).await?;
    let outputs = pool.outputs();
    let mut handles = Vec::new();
    for k in 0..n {
        handles.push(
            pool.submit_to(k, Task::Set((n - 1 - k) as i64))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    all_ok(handles).await?;
    let values = broadcast_get(&pool, &outputs).await?;
    for (worker, value) in &values {
        ensure!(
            value + *worker as i64 == n as i64 - 1,
            "worker {worker} holds {value}"
        );
    }
    for k in 0..n {
        let answer = pool
            .call_to(k, Task::WhoAmI)
            .await
            .map_err(|e| e.to_string())?;
        ensure!(answer == Out::Worker(k), "call_to({k}) answered {answer:?}");
    }
    let nowhere = pool.try_submit_to(n, Task::Get);
    ensure!(
        matches!(nowhere, Err(SubmitError::Unroutable(Task::Get, _))),
        "worker {n}: {nowhere:?}"
    );
    stop_gracefully(&pool).await
}

async fn errors_and_panics_reach_the_parent_and_the_worker_goes_on<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 2)).await?;
    let pid = pool.pid(0);
    let failing = pool
        .submit_to(0, Task::Fail("the disk is full".into()))
        .await
        .map_err(|e| e.to_string())?;
    let failing_id = failing.id();
    match failing.await {
        Err(TaskError::Failed { message }) => {
            ensure!(message == "the disk is full", "message {message:?}")
        }
        other => {
            return Err(format!(
                "task {failing_id}: expected a failure, got {other:?}"
            ))
        }
    }
    match pool.call_to(0, Task::Panic("kaboom".into())).await {
        Err(CallError::Task(TaskError::Panicked { message })) => {
            ensure!(message == "kaboom", "message {message:?}")
        }
        other => return Err(format!("expected a panic, got {other:?}")),
    }
    let after = pool
        .call_to(0, Task::Double(21))
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        after == Out::Doubled(42),
        "after the failures worker 0 answered {after:?}"
    );
    ensure!(
        pool.pid(0) == pid,
        "worker 0 was replaced: {pid:?} -> {:?}",
        pool.pid(0)
    );
    stop_gracefully(&pool).await
}

async fn result_credit_bounds_unacknowledged_outputs_and_loses_nothing<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let credit = 3;
    let pool = start(pool::<A>(m, 1).result_credit(credit)).await?;
    let outputs = pool.outputs();
    // try_put: the first `credit` go through, the rest are handed back.
    let tried = pool
        .submit(Task::TryEmit {
            n: 5,
            accepted: credit as u32,
        })
        .await
        .map_err(|e| e.to_string())?;
    tried.await.map_err(|e| format!("TryEmit: {e}"))?;
    let mut first = Vec::new();
    for _ in 0..credit {
        first.push(outputs.recv().await.ok_or("the stream ended")?);
    }
    ensure!(
        outputs.try_recv().is_none(),
        "more than {credit} outputs were emitted"
    );
    drop(first);

    // put with a slow consumer: hold `credit` deliveries, acknowledge the oldest only then.
    let emitting = pool
        .submit(Task::Emit(50))
        .await
        .map_err(|e| e.to_string())?;
    let mut held = std::collections::VecDeque::new();
    let mut received = Vec::new();
    while received.len() < 50 {
        let d = outputs.recv().await.ok_or("the stream ended early")?;
        received.push(d.value().clone());
        held.push_back(d);
        if held.len() == credit {
            // No credit is left, so the worker cannot have emitted another output.
            ensure!(
                outputs.try_recv().is_none(),
                "an output beyond the credit arrived"
            );
            held.pop_front();
        }
    }
    drop(held);
    emitting.await.map_err(|e| format!("Emit: {e}"))?;
    ensure!(
        received == (0..50).map(Out::Seq).collect::<Vec<_>>(),
        "received {received:?}"
    );
    stop_gracefully(&pool).await
}

async fn outputs_are_flushed_before_the_next_cpu_bound_task_starts<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 1)).await?;
    let outputs = pool.outputs();
    let marker = std::env::temp_dir().join(format!("looppool-spin-{}-{m:?}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let first = pool
        .submit(Task::Double(5))
        .await
        .map_err(|e| e.to_string())?;
    let spinning = pool
        .submit(Task::SpinUntilExists(marker.to_string_lossy().into_owned()))
        .await
        .map_err(|e| e.to_string())?;
    // The spinning task never yields until the marker exists, and the marker is only created
    // once the first task's output and end have arrived.
    let output = within(
        &*A::runtime(),
        Duration::from_secs(20),
        "the first task's output",
        outputs.recv(),
    )
    .await;
    let ended = within(
        &*A::runtime(),
        Duration::from_secs(20),
        "the first task's end",
        first,
    )
    .await;
    std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
    let output = output?.ok_or("the stream ended")?;
    ensure!(*output == Out::Doubled(10), "first output {:?}", *output);
    ensure!(ended == Ok(Ok(())), "first task {ended:?}");
    spinning.await.map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&marker);
    stop_gracefully(&pool).await
}

async fn values_that_cannot_be_encoded_are_refused_at_the_call<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 1).max_frame(64 * 1024)).await?;
    match pool.try_submit(Task::Unencodable(Refuse)) {
        Err(SubmitError::Encode(Task::Unencodable(Refuse), message)) => {
            ensure!(
                message.contains("cannot encode the task"),
                "message {message:?}"
            )
        }
        other => return Err(format!("expected an encode error, got {other:?}")),
    }
    match pool.submit(Task::Blob(vec![7; 100_000])).await {
        Err(SubmitError::Encode(Task::Blob(blob), message)) => {
            ensure!(blob.len() == 100_000, "the task came back changed");
            ensure!(message.contains("frame limit"), "message {message:?}");
        }
        other => return Err(format!("expected a size error, got {other:?}")),
    }
    let answer = pool
        .call(Task::PutUnencodable)
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        answer == Out::Doubled(1),
        "PutUnencodable answered {answer:?}"
    );
    stop_gracefully(&pool).await
}

async fn a_bad_frame_from_a_worker_ends_only_its_link_with_a_clear_error<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let cases = [
        (Fault::Oversized, "exceeds the limit"),
        (Fault::Garbage, "malformed"),
        (Fault::Truncated, "truncated frame"),
    ];
    for (fault, expected) in cases {
        // With a result credit of 1 and no consumer, `Hold` stays in flight until the link ends.
        let pool = start(pool::<A>(m, 2).concurrency(2).result_credit(1)).await?;
        let before = pool
            .submit_to(0, Task::Hold)
            .await
            .map_err(|e| e.to_string())?;
        let faulty = pool
            .submit_to(0, Task::Fault(fault))
            .await
            .map_err(|e| e.to_string())?;
        for (what, handle) in [("the faulty task", faulty), ("a task beside it", before)] {
            match handle.await {
                Err(TaskError::Lost {
                    worker: 0,
                    cause: Some(cause),
                    ..
                }) => {
                    ensure!(
                        cause.contains(expected),
                        "{fault:?}: {what} lost with {cause:?}"
                    )
                }
                other => return Err(format!("{fault:?}: {what} ended with {other:?}")),
            }
        }
        let answer = pool
            .call_to(1, Task::Double(2))
            .await
            .map_err(|e| format!("{fault:?}: {e}"))?;
        ensure!(
            answer == Out::Doubled(4),
            "{fault:?}: worker 1 answered {answer:?}"
        );
        // `Hold`'s first output still waits unread and holds the worker number's only credit:
        // reading it hands that credit to the replacement.
        let unread = pool.outputs().try_recv().map(|d| d.into_value());
        ensure!(
            unread == Some(Out::Seq(0)),
            "{fault:?}: the unread output was {unread:?}"
        );
        // The worker that broke the protocol is treated as dead, and replaced.
        let rt = A::runtime();
        let again = within(
            &*rt,
            Duration::from_secs(30),
            "the replacement",
            pool.call_to(0, Task::WhoAmI),
        )
        .await
        .map_err(|e| format!("{fault:?}: {e}: {pool:?}"))?
        .map_err(|e| format!("{fault:?}: {e}"))?;
        ensure!(
            again == Out::Worker(0),
            "{fault:?}: the replacement answered {again:?}"
        );
        let stopped = pool.stop().await;
        ensure!(stopped.killed().is_empty(), "{fault:?}: {stopped:?}");
    }
    Ok(())
}

async fn a_protocol_version_mismatch_fails_the_start_clearly<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    match pool::<A>(m, 2).protocol_version(99).start().await {
        Err(Error::Handshake { reason, .. }) => {
            ensure!(
                reason.contains("protocol version mismatch"),
                "reason {reason:?}"
            );
            ensure!(
                reason.contains("99"),
                "the reason does not name the version: {reason:?}"
            );
            Ok(())
        }
        other => Err(format!("expected a handshake error, got {other:?}")),
    }
}

async fn a_failing_init_hook_fails_the_start_clearly<A: Adapter>(m: StartMethod) -> Outcome {
    let started = Pool::<FailingInit>::builder(A::runtime())
        .start_method(m)
        .workers(2)
        .start()
        .await;
    match started {
        Err(Error::Init { message, .. }) => {
            ensure!(
                message.contains("no database at db.invalid"),
                "message {message:?}"
            );
            Ok(())
        }
        other => Err(format!("expected an init error, got {other:?}")),
    }
}

async fn stop_racing_submissions_ends_every_accepted_task<A: Adapter>(m: StartMethod) -> Outcome {
    for round in 0..4 {
        let pool = start(pool::<A>(m, 2)).await?;
        let outputs = pool.outputs();
        let submitting = async {
            let mut accepted = Vec::new();
            for n in 0.. {
                match pool.submit(Task::Double(n)).await {
                    Ok(h) => accepted.push(h),
                    Err(SubmitError::Closed(Task::Double(k))) if k == n => return Ok(accepted),
                    Err(e) => return Err(format!("round {round}: unexpected refusal {e}")),
                }
                if n == 20 * round {
                    // Let the stop begin while submissions are still coming.
                    futures_util::pending!();
                }
            }
            unreachable!()
        };
        let ((accepted, stopped), _) = draining(
            &outputs,
            futures_util::future::join(submitting, pool.stop()),
        )
        .await;
        let accepted = accepted?;
        ensure!(stopped.is_graceful(), "round {round}: {stopped:?}");
        for h in accepted {
            let id = h.id();
            let ended = futures_util::FutureExt::now_or_never(h);
            ensure!(
                ended == Some(Ok(())),
                "round {round}: task {id} has {ended:?} after stop"
            );
        }
    }
    Ok(())
}

async fn a_killed_worker_loses_its_tasks_with_the_signal_and_others_go_on<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    use nix::sys::signal::{kill, Signal};
    let pool = start(
        pool::<A>(m, 2)
            .concurrency(2)
            .result_credit(1)
            .respawn(false),
    )
    .await?;
    // Two tasks stuck on credit (nobody reads the outputs) are in flight on worker 0.
    let stuck = [
        pool.submit_to(0, Task::Hold)
            .await
            .map_err(|e| e.to_string())?,
        pool.submit_to(0, Task::Hold)
            .await
            .map_err(|e| e.to_string())?,
    ];
    let pid = pool.pid(0).ok_or("worker 0 has no pid")?;
    kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).map_err(|e| e.to_string())?;
    for h in stuck {
        match h.await {
            Err(TaskError::Lost {
                worker: 0,
                exit: Exit::Signal(9),
                ..
            }) => {}
            other => return Err(format!("a task of the killed worker ended with {other:?}")),
        }
    }
    match pool.call_to(1, Task::Exit(3)).await {
        Err(CallError::Task(TaskError::Lost {
            worker: 1,
            exit: Exit::Code(3),
            ..
        })) => {}
        other => return Err(format!("a worker that exited with 3: {other:?}")),
    }
    let nobody = pool.try_submit(Task::Get);
    ensure!(
        matches!(nobody, Err(SubmitError::Unroutable(..))),
        "with every worker dead: {nobody:?}"
    );
    let stopped = within(&*A::runtime(), Duration::from_secs(10), "stop", pool.stop()).await?;
    ensure!(
        stopped.exits() == [Exit::Signal(9), Exit::Code(3)],
        "exits {:?}",
        stopped.exits()
    );
    Ok(())
}

async fn dropping_a_pool_leaves_no_worker_process<A: Adapter>(m: StartMethod) -> Outcome {
    let pool = start(pool::<A>(m, 3)).await?;
    let pids: Vec<u32> = (0..3)
        .map(|k| pool.pid(k).ok_or(format!("worker {k} has no pid")))
        .collect::<Result<_, _>>()?;
    let handle = pool.submit(Task::Hold).await.map_err(|e| e.to_string())?;
    drop(pool);
    for pid in pids {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        ensure!(!alive, "worker process {pid} outlived its dropped pool");
    }
    let ended = futures_util::FutureExt::now_or_never(handle);
    ensure!(
        matches!(ended, Some(Err(TaskError::Lost { .. }))),
        "its task: {ended:?}"
    );
    Ok(())
}

/// Whether process `pid` exists and is not a zombie.
fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

async fn worker_processes_are_named_ignore_terminal_signals_and_hold_only_their_link<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    use nix::sys::signal::{kill, Signal};
    let before = sockets("self")?;
    let pool = start(pool::<A>(m, 2)).await?;
    // The sockets the parent opened for the pool: its ends of the links.
    let links: Vec<String> = sockets("self")?
        .into_iter()
        .filter(|s| !before.contains(s))
        .collect();
    ensure!(
        links.len() >= 2,
        "the parent holds {} new sockets for 2 links",
        links.len()
    );
    for k in 0..2 {
        let pid = pool.pid(k).ok_or(format!("worker {k} has no pid"))?;
        let comm =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).map_err(|e| e.to_string())?;
        ensure!(
            comm.trim_end() == format!("lp{k}-conformance"),
            "worker {k} comm {comm:?}"
        );
        if m == StartMethod::ReExec {
            let cmdline =
                std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| e.to_string())?;
            let title = format!("looppool: conformance worker {k}\0");
            ensure!(
                cmdline.starts_with(title.as_bytes()),
                "worker {k} cmdline {:?}",
                String::from_utf8_lossy(&cmdline)
            );
        }
        let shared: Vec<String> = sockets(&pid.to_string())?
            .into_iter()
            .filter(|s| links.contains(s))
            .collect();
        ensure!(
            shared.is_empty(),
            "worker {k} holds the parent's link ends {shared:?}"
        );
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            kill(nix::unistd::Pid::from_raw(pid as i32), sig).map_err(|e| e.to_string())?;
        }
        let answer = pool
            .call_to(k, Task::WhoAmI)
            .await
            .map_err(|e| format!("after SIGINT and SIGTERM: {e}"))?;
        ensure!(answer == Out::Worker(k), "worker {k} answered {answer:?}");
        ensure!(pool.pid(k) == Some(pid), "worker {k} was replaced");
    }
    stop_gracefully(&pool).await
}

/// The sockets process `pid` ("self" for this one) has open, as `socket:[inode]`.
fn sockets(pid: &str) -> Result<Vec<String>, String> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with("socket:"))
        .collect())
}

/// The body of the parent process of [`workers_die_with_a_parent_that_is_killed`].
pub(super) async fn parent_until_killed<A: Adapter>(m: StartMethod) {
    let pool = start(pool::<A>(m, 3)).await.expect("the pool starts");
    let pids: Vec<String> = (0..3)
        .map(|k| pool.pid(k).expect("a live worker").to_string())
        .collect();
    println!("{}", pids.join(" "));
    std::future::pending::<()>().await;
}

async fn workers_die_with_a_parent_that_is_killed<A: Adapter>(m: StartMethod) -> Outcome {
    use futures_util::AsyncReadExt;
    use std::os::unix::net::UnixStream;
    let runtime = A::runtime();
    // The parent's stdout is a socket so it can be read without blocking this thread.
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut parent = std::process::Command::new(exe)
        .env(
            super::PARENT_VAR,
            format!("{}:{}", A::NAME, super::method_name(m)),
        )
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )))
        .spawn()
        .map_err(|e| e.to_string())?;
    ours.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut io = runtime.wrap_unix(ours).map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let read_line = async {
        let mut byte = [0u8];
        while io.read(&mut byte).await.map_err(|e| e.to_string())? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        Ok::<_, String>(())
    };
    within(
        &*runtime,
        Duration::from_secs(30),
        "the parent's worker pids",
        read_line,
    )
    .await??;
    let pids: Vec<u32> = String::from_utf8_lossy(&line)
        .split_whitespace()
        .map(|p| p.parse().map_err(|_| format!("not a pid: {p:?}")))
        .collect::<Result<_, _>>()?;
    ensure!(
        pids.len() == 3 && pids.iter().all(|&p| is_alive(p)),
        "the parent reported {pids:?}"
    );
    parent.kill().map_err(|e| e.to_string())?;
    parent.wait().map_err(|e| e.to_string())?;
    // Wait for the workers to go: the kernel signals them when their parent dies.
    let gone = async {
        while pids.iter().any(|&p| is_alive(p)) {
            runtime.sleep(Duration::from_millis(5)).await;
        }
    };
    within(
        &*runtime,
        Duration::from_secs(5),
        "the orphaned workers to die",
        gone,
    )
    .await
}

async fn fork_is_refused_while_the_process_has_threads<A: Adapter>(_: StartMethod) -> Outcome {
    let (stop, parked) = std::sync::mpsc::channel::<()>();
    let extra = std::thread::spawn(move || parked.recv());
    let started = pool::<A>(StartMethod::Fork, 1).start().await;
    drop(stop);
    let _ = extra.join();
    match started {
        Err(Error::ForkUnsafe { threads }) => {
            ensure!(threads >= 2, "refused with {threads} threads");
            Ok(())
        }
        other => Err(format!("expected fork to be refused, got {other:?}")),
    }
}

/// A fresh path in the temporary directory for this trial.
fn temp_path(what: &str, m: StartMethod) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("looppool-{what}-{}-{m:?}", std::process::id()))
}

/// Kills worker `k` (SIGKILL for a process, a closed link for a thread) and waits until the
/// pool has seen it die: a task it held ends as lost. Only then is a task sent to worker `k`
/// sure to reach its replacement rather than the dying incarnation.
async fn kill(pool: &Pool<Probe>, k: usize) -> Outcome {
    let witness = pool
        .submit_to(k, Task::Sleep(600_000))
        .await
        .map_err(|e| e.to_string())?;
    pool.kill_worker(k);
    match witness.await {
        Err(TaskError::Lost { worker, .. }) if worker == k => Ok(()),
        other => Err(format!("a task on killed worker {k} ended with {other:?}")),
    }
}

async fn a_dead_worker_is_replaced_under_its_number_with_its_sticky_state<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 2)).await?;
    let outputs = pool.outputs();
    let (set, _) = draining(&outputs, async {
        all_ok(
            pool.broadcast_sticky("value", Task::Set(26))
                .await
                .map_err(|e| e.to_string())?,
        )
        .await
    })
    .await;
    set?;
    let before = pool.pid(1);
    kill(&pool, 1).await?;
    // A targeted task waits for the replacement, which replays the sticky broadcast first.
    let answer = pool
        .call_to(1, Task::Get)
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        answer
            == Out::Value {
                value: 26,
                worker: 1
            },
        "the replacement answered {answer:?}"
    );
    if m != StartMethod::Thread {
        ensure!(pool.pid(1) != before, "worker 1 kept pid {before:?}");
    }
    let values = broadcast_get(&pool, &outputs).await?;
    ensure!(values.values().all(|&v| v == 26), "values {values:?}");
    stop_gracefully(&pool).await
}

async fn a_worker_that_cannot_start_is_given_up_after_the_restart_limit<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let marker = temp_path("no-init", m);
    let _ = std::fs::remove_file(&marker);
    std::env::set_var(super::probe::FAIL_INIT_VAR, &marker);
    let builder = pool::<A>(m, 2)
        .restart_limit(3, Duration::from_secs(600))
        .restart_backoff(Duration::from_millis(1), Duration::from_millis(20))
        // However slow the machine, the first worker's death counts as a quick failure.
        .restart_healthy_after(Duration::from_secs(600));
    let started = start(builder).await;
    let outcome = async {
        let pool = started?;
        std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
        kill(&pool, 0).await?;
        // Waits while worker 0 is being replaced, and is refused once it is given up.
        match pool.submit_to(0, Task::WhoAmI).await {
            Err(SubmitError::Unroutable(Task::WhoAmI, _)) => {}
            other => return Err(format!("after the restart limit: {other:?}")),
        }
        let tries = std::fs::read(&marker).map_err(|e| e.to_string())?.len();
        ensure!(tries == 3, "{tries} replacements were tried, not 3");
        let answer = pool
            .call_to(1, Task::WhoAmI)
            .await
            .map_err(|e| e.to_string())?;
        ensure!(answer == Out::Worker(1), "worker 1 answered {answer:?}");
        // The stats say until when it is given up; a revival brings it back sooner.
        let until = pool.stats().workers[0].given_up_until;
        ensure!(
            until.is_some(),
            "worker 0's stats: given up until {until:?}"
        );
        std::fs::remove_file(&marker).map_err(|e| e.to_string())?;
        ensure!(pool.revive(0), "the revival of worker 0 was refused");
        let back = within(
            &*A::runtime(),
            Duration::from_secs(30),
            "the revived worker",
            pool.call_to(0, Task::WhoAmI),
        )
        .await?;
        ensure!(
            matches!(back, Ok(Out::Worker(0))),
            "the revived worker answered {back:?}"
        );
        ensure!(
            pool.stats().workers[0].given_up_until.is_none(),
            "still given up"
        );
        stop_gracefully(&pool).await
    }
    .await;
    std::env::remove_var(super::probe::FAIL_INIT_VAR);
    let _ = std::fs::remove_file(&marker);
    outcome
}

async fn a_lost_task_is_retried_on_a_live_worker<A: Adapter>(m: StartMethod) -> Outcome {
    let pool = start(pool::<A>(m, 2).retries(2)).await?;
    let marker = temp_path("crash-once", m);
    std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
    let answer = pool
        .call(Task::CrashOnce(marker.to_string_lossy().into_owned()))
        .await;
    ensure!(
        answer.as_ref().ok() == Some(&Out::Doubled(1)),
        "the retried call gave {answer:?}"
    );
    let mut handle = pool
        .submit(Task::Double(1))
        .await
        .map_err(|e| e.to_string())?;
    (&mut handle).await.map_err(|e| e.to_string())?;
    ensure!(
        handle.attempts() == 1,
        "a task that never met a crash took {} attempts",
        handle.attempts()
    );
    std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
    let mut crashing = pool
        .submit(Task::CrashOnce(marker.to_string_lossy().into_owned()))
        .await
        .map_err(|e| e.to_string())?;
    let ended = (&mut crashing).await;
    ensure!(
        ended.is_ok() && crashing.attempts() == 2,
        "{ended:?} after {} attempts",
        crashing.attempts()
    );
    stop_gracefully(&pool).await
}

async fn a_task_past_its_timeout_is_cancelled_and_its_worker_goes_on<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 1).task_timeout(Duration::from_millis(100))).await?;
    let pid = pool.pid(0);
    match pool.call(Task::Sleep(60_000)).await {
        Err(CallError::Task(TaskError::TimedOut { after })) => {
            ensure!(
                after == Duration::from_millis(100),
                "timed out after {after:?}"
            )
        }
        other => return Err(format!("a sleeping task past its timeout: {other:?}")),
    }
    let answer = pool
        .call(Task::Double(4))
        .await
        .map_err(|e| e.to_string())?;
    ensure!(answer == Out::Doubled(8), "after the timeout: {answer:?}");
    ensure!(pool.pid(0) == pid, "the worker was replaced");
    stop_gracefully(&pool).await
}

async fn a_worker_stuck_in_cpu_bound_code_is_killed_and_only_its_tasks_are_lost<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let builder = pool::<A>(m, 2)
        .task_timeout(Duration::from_millis(50))
        .stall_grace(Duration::from_millis(200));
    let pool = start(builder).await?;
    let stuck_pid = pool.pid(0);
    let stuck = pool
        .submit_to(0, Task::Spin(60_000))
        .await
        .map_err(|e| e.to_string())?;
    let beside = pool
        .call_to(1, Task::Double(1))
        .await
        .map_err(|e| e.to_string())?;
    ensure!(beside == Out::Doubled(2), "worker 1 answered {beside:?}");
    match stuck.await {
        Err(TaskError::Lost {
            worker: 0,
            exit: Exit::Signal(9),
            cause: Some(cause),
        }) => {
            ensure!(cause.contains("did not turn"), "cause {cause:?}")
        }
        other => return Err(format!("the spinning task ended with {other:?}")),
    }
    let again = pool
        .call_to(0, Task::WhoAmI)
        .await
        .map_err(|e| e.to_string())?;
    ensure!(
        again == Out::Worker(0) && pool.pid(0) != stuck_pid,
        "worker 0 was not replaced"
    );
    stop_gracefully(&pool).await
}

async fn a_worker_is_recycled_after_its_task_limit_without_losing_a_task<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 1).recycle_after_tasks(3)).await?;
    let mut pids = Vec::new();
    for _ in 0..7 {
        match pool.call(Task::Pid).await.map_err(|e| e.to_string())? {
            Out::Pid(pid) => pids.push(pid),
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    let distinct: Vec<u32> = pids.iter().fold(Vec::new(), |mut v, &p| {
        if v.last() != Some(&p) {
            v.push(p);
        }
        v
    });
    ensure!(
        distinct.len() == 3,
        "pids {pids:?}: expected three incarnations of three tasks or fewer"
    );
    ensure!(
        pids[..3].iter().all(|&p| p == pids[0]),
        "the first incarnation ran {pids:?}"
    );
    stop_gracefully(&pool).await
}

async fn a_worker_over_its_memory_limit_is_recycled<A: Adapter>(m: StartMethod) -> Outcome {
    let pool = start(pool::<A>(m, 1).recycle_above_rss(256 << 20)).await?;
    let first = pool.pid(0);
    let no_output = |r: Result<Out, CallError<Task>>| match r {
        Err(CallError::NoOutput(_)) => Ok(()),
        other => Err(format!("{other:?}")),
    };
    no_output(pool.call(Task::Grow(300)).await)?;
    // The monitor looks every second: while this task holds the worker past a look, the
    // worker is retired, and it drains this task before it goes. Nothing is lost.
    no_output(pool.call(Task::Sleep(2_500)).await)?;
    // The next task waits for the replacement.
    match pool.call_to(0, Task::Pid).await {
        Ok(Out::Pid(pid)) => ensure!(Some(pid) != first, "worker 0 is still pid {pid}"),
        other => return Err(format!("after recycling: {other:?}")),
    }
    stop_gracefully(&pool).await
}

async fn the_stop_deadline_kills_stragglers_and_their_tasks_are_lost<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(
        pool::<A>(m, 2)
            .result_credit(1)
            .stop_backlog(0)
            .stop_timeout(Duration::from_millis(200)),
    )
    .await?;
    // Nobody reads the outputs and the stop grants no backlog, so `Hold` never ends: only the
    // deadline ends the stop.
    let stuck = pool
        .submit_to(0, Task::Hold)
        .await
        .map_err(|e| e.to_string())?;
    let stopped = pool.stop().await;
    ensure!(stopped.killed() == [0], "killed {:?}", stopped.killed());
    let ended = futures_util::FutureExt::now_or_never(stuck);
    ensure!(
        matches!(ended, Some(Err(TaskError::Lost { worker: 0, .. }))),
        "the stuck task: {ended:?}"
    );
    Ok(())
}

/// Submits `n` tasks while killing a random worker now and then; returns how the tasks ended
/// (completed, lost) and how many outputs the completed ones delivered.
async fn run_with_kills(
    pool: &Pool<Probe>,
    n: u64,
    seed: u64,
) -> Result<(u64, u64, u64, Vec<u32>), String> {
    let outputs = pool.outputs();
    let mut rng = seed;
    let (handles, seen) = draining(&outputs, async {
        let mut handles = Vec::new();
        for i in 0..n {
            handles.push(
                pool.submit(Task::Double(i))
                    .await
                    .map_err(|e| e.to_string())?,
            );
            if i % 250 == 125 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                pool.kill_worker((rng >> 33) as usize % pool.size());
            }
        }
        let mut ended = Vec::new();
        for mut h in handles {
            let id = h.id();
            let r = (&mut h).await;
            ended.push((id, r, h.attempts()));
        }
        Ok::<_, String>(ended)
    })
    .await;
    let ended = handles?;
    let (mut completed, mut lost) = (0, 0);
    let mut attempts = Vec::new();
    for (id, r, a) in &ended {
        match r {
            Ok(()) => completed += 1,
            Err(TaskError::Lost { .. }) => lost += 1,
            Err(e) => return Err(format!("task {id}: {e}")),
        }
        attempts.push(*a);
    }
    Ok((completed, lost, seen.len() as u64, attempts))
}

async fn thousands_of_tasks_survive_random_worker_kills<A: Adapter>(m: StartMethod) -> Outcome {
    let n = 3_000;
    // Without retries: every task ends exactly once, completed or lost, and each completed
    // task's output arrived.
    let plain = start(pool::<A>(m, 4).capacity(8)).await?;
    let (completed, lost, outputs, _) = run_with_kills(&plain, n, 1).await?;
    ensure!(
        completed + lost == n,
        "{completed} completed + {lost} lost of {n}"
    );
    ensure!(lost > 0, "no task was lost: the kills did not land");
    ensure!(
        outputs >= completed,
        "{outputs} outputs for {completed} completed tasks"
    );
    stop_gracefully(&plain).await?;
    eprintln!("fault injection, {} workers killed at random: {n} tasks without retries: {completed} completed, {lost} lost", A::NAME);
    // With retries, every task completes.
    let retrying = start(pool::<A>(m, 4).capacity(8).retries(10)).await?;
    let (completed, lost, _, attempts) = run_with_kills(&retrying, n, 2).await?;
    ensure!(
        completed == n && lost == 0,
        "with retries: {completed} completed, {lost} lost"
    );
    let retried = attempts.iter().filter(|&&a| a > 1).count();
    ensure!(
        retried > 0,
        "no task needed a retry: the kills did not land"
    );
    eprintln!("fault injection, {} workers killed at random: {n} tasks with retries: all completed, {retried} after a retry", A::NAME);
    stop_gracefully(&retrying).await
}

/// Waits (polling the pool's statistics every 20 ms, at most 30 s) until `ready` holds of them;
/// returns them, or says what they last were.
async fn stats_until<A: Adapter>(
    pool: &Pool<Probe>,
    what: &str,
    ready: impl Fn(&PoolStats) -> bool,
) -> Result<PoolStats, String> {
    let runtime = A::runtime();
    let poll = async {
        loop {
            let stats = pool.stats();
            if ready(&stats) {
                return stats;
            }
            runtime.sleep(Duration::from_millis(20)).await;
        }
    };
    within(&*A::runtime(), Duration::from_secs(30), what, poll)
        .await
        .map_err(|e| format!("{e}; the stats were {:#?}", pool.stats()))
}

async fn workers_report_cpu_memory_lag_and_task_counts<A: Adapter>(m: StartMethod) -> Outcome {
    let builder = pool::<A>(m, 2)
        .name(format!("stats-{}-{m:?}", A::NAME))
        .stats_interval(Some(Duration::from_millis(50)));
    let pool = start(builder).await?;
    let failed = pool
        .submit_to(1, Task::Fail("counted".into()))
        .await
        .map_err(|e| e.to_string())?;
    ensure!(failed.await.is_err(), "the failing task succeeded");
    // Worker 0 spins in 20 ms slices, back to back, until a report shows it busy; its loop
    // turns between slices, so it keeps reporting, late by up to a slice.
    let busy = async {
        loop {
            let handle = pool.submit_to(0, Task::Spin(20)).await;
            let Ok(handle) = handle else {
                return;
            };
            drop(handle);
        }
    };
    let seen = {
        let watch = stats_until::<A>(&pool, "worker 0 showing as busy", |s| {
            let w = &s.workers[0];
            w.cpu > 0.3 && w.max_loop_lag >= Duration::from_millis(5) && w.completed >= 3
        });
        match select(pin!(watch), pin!(busy)).await {
            Either::Left((seen, _)) => seen?,
            Either::Right(_) => return Err("the submitter ended".into()),
        }
    };
    let (busy, idle) = (&seen.workers[0], &seen.workers[1]);
    for w in [busy, idle] {
        ensure!(
            w.rss > 1 << 20 && w.peak_rss >= w.rss,
            "worker {}: rss {} peak {}",
            w.worker,
            w.rss,
            w.peak_rss
        );
        ensure!(
            w.reported_at.is_some(),
            "worker {} never reported",
            w.worker
        );
        ensure!(
            w.latency_count == w.completed + w.failed,
            "worker {}: {} latencies for {} ends",
            w.worker,
            w.latency_count,
            w.completed + w.failed
        );
        ensure!(
            (A::NAME == "tokio") == w.runtime_tasks.is_some(),
            "worker {}: runtime tasks {:?} on {}",
            w.worker,
            w.runtime_tasks,
            A::NAME
        );
    }
    ensure!(
        busy.failed == 0 && busy.latency_max >= Duration::from_millis(20),
        "worker 0: {busy:?}"
    );
    ensure!(
        idle.failed == 1 && idle.completed == 0 && idle.lost == 0 && idle.blocked_total == 0,
        "worker 1: {idle:?}"
    );
    ensure!(
        pool.stats().name == format!("stats-{}-{m:?}", A::NAME),
        "the pool's name"
    );
    stop_gracefully(&pool).await
}

async fn a_blocked_loop_is_reported_with_its_worker_and_tasks<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let name = format!("blocked-{}-{m:?}", A::NAME);
    // Well above the stutters of a loaded machine (a process not scheduled for a few hundred
    // milliseconds), so that only the spinning task can make a loop miss it.
    let threshold = Duration::from_secs(1);
    let builder = pool::<A>(m, 2)
        .name(name.clone())
        .blocked_threshold(threshold);
    let pool = start(builder).await?;
    let release = temp_path("blocked", m);
    let _ = std::fs::remove_file(&release);
    let stuck = pool
        .submit_to(1, Task::SpinUntilExists(release.display().to_string()))
        .await
        .map_err(|e| e.to_string())?;
    let id = stuck.id();
    let seen = stats_until::<A>(&pool, "worker 1 reported blocked", |s| {
        s.workers[1].blocked_total == 1
    })
    .await?;
    ensure!(
        seen.workers[1].blocked_for >= Some(threshold),
        "blocked for {:?}",
        seen.workers[1].blocked_for
    );
    let warned = |e: &Captured| {
        e.level == tracing::Level::WARN
            && e.field("pool") == name
            && e.field("message").contains("has not turned")
    };
    let warnings = captured(warned);
    ensure!(
        warnings.len() == 1
            && warnings[0].field("worker") == "1"
            && warnings[0].field("tasks") == format!("[{id}]"),
        "the warnings: {warnings:?}"
    );
    // The other worker goes on meanwhile, and is not reported.
    let beside = pool
        .call_to(0, Task::Double(4))
        .await
        .map_err(|e| e.to_string())?;
    ensure!(beside == Out::Doubled(8), "worker 0 answered {beside:?}");
    std::fs::write(&release, b"go").map_err(|e| e.to_string())?;
    stuck.await.map_err(|e| format!("the blocking task: {e}"))?;
    let after = stats_until::<A>(&pool, "worker 1 turning again", |s| {
        s.workers[1].blocked_for.is_none()
    })
    .await?;
    let _ = std::fs::remove_file(&release);
    ensure!(
        after.workers[1].blocked_total == 1 && after.workers[0].blocked_total == 0,
        "blocked counts {:?}",
        after
            .workers
            .iter()
            .map(|w| w.blocked_total)
            .collect::<Vec<_>>()
    );
    stop_gracefully(&pool).await
}

async fn worker_log_events_and_panics_reach_the_parent_tagged<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let name = format!("logs-{}-{m:?}", A::NAME);
    let pool = start(pool::<A>(m, 2).name(name.clone())).await?;
    let logged = pool
        .submit_to(1, Task::Log("hello from a task".into()))
        .await
        .map_err(|e| e.to_string())?;
    let log_id = logged.id();
    logged.await.map_err(|e| e.to_string())?;
    let panicked = pool
        .submit_to(0, Task::Panic("a forwarded panic".into()))
        .await
        .map_err(|e| e.to_string())?;
    let panic_id = panicked.id();
    ensure!(panicked.await.is_err(), "the panicking task succeeded");
    let from_pool = |e: &Captured| e.target == "looppool::worker" && e.field("pool") == name;
    // A relayed event is emitted when its frame arrives, which may be after the task's end.
    let wait = async {
        loop {
            let events = captured(from_pool);
            if events.len() >= 2 {
                return events;
            }
            A::runtime().sleep(Duration::from_millis(20)).await;
        }
    };
    let events = within(
        &*A::runtime(),
        Duration::from_secs(30),
        "relayed events",
        wait,
    )
    .await?;
    let info = events
        .iter()
        .find(|e| e.field("message").contains("hello from a task"));
    ensure!(
        info.is_some_and(|e| e.level == tracing::Level::INFO
            && e.field("worker") == "1"
            && e.field("task") == log_id.to_string()
            && e.field("message").contains("answer=42")
            && e.field("worker_target").contains("looppool_testkit")),
        "the task's event: {events:#?}"
    );
    let panic = events
        .iter()
        .find(|e| e.field("message").contains("a forwarded panic"));
    ensure!(
        panic.is_some_and(|e| e.level == tracing::Level::ERROR
            && e.field("worker") == "0"
            && e.field("task") == panic_id.to_string()),
        "the panic's event: {events:#?}"
    );
    stop_gracefully(&pool).await
}

async fn large_and_small_tasks_arrive_intact_in_order<A: Adapter>(m: StartMethod) -> Outcome {
    let pool = start(pool::<A>(m, 1).capacity(8)).await?;
    // Sizes on both sides of the writer's direct-write threshold, interleaved.
    let sizes = [16, 70_000, 1 << 20, 3, 65_535, 65_536, 300_001, 0];
    let blobs: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (j * 31 + i * 7) as u8).collect())
        .collect();
    let outputs = pool.outputs();
    let submitted = async {
        let mut handles = Vec::new();
        for blob in &blobs {
            handles.push(pool.submit(Task::Digest(blob.clone())).await);
        }
        handles
    };
    let (handles, mut seen) = draining(&outputs, submitted).await;
    for (i, handle) in handles.into_iter().enumerate() {
        let handle = handle.map_err(|e| format!("task {i}: {e}"))?;
        let (ended, more) = draining(&outputs, handle).await;
        seen.extend(more);
        ended.map_err(|e| format!("task {i}: {e}"))?;
    }
    let got: Vec<_> = seen.into_iter().map(|(_, _, out)| out).collect();
    let expected: Vec<_> = blobs
        .iter()
        .map(|b| Out::Digest(b.len(), fnv1a(b)))
        .collect();
    ensure!(got == expected, "digests {got:?}, expected {expected:?}");
    stop_gracefully(&pool).await
}

/// The nice value of process `pid`, from `/proc/<pid>/stat`.
fn nice_of(pid: u32) -> Result<i64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name (which may hold spaces): state is the 3rd, nice the 19th.
    let after = stat.rsplit_once(')').ok_or("no command name")?.1;
    after
        .split_whitespace()
        .nth(16)
        .and_then(|n| n.parse().ok())
        .ok_or(format!("no nice value in {stat:?}"))
}

async fn workers_started_nice_run_at_that_priority<A: Adapter>(m: StartMethod) -> Outcome {
    let refused = pool::<A>(m, 1).worker_nice(25).start().await;
    ensure!(
        matches!(&refused, Err(Error::Config(why)) if why.contains("nice")),
        "a nice value of 25 was not refused: {:?}",
        refused.map(|_| ())
    );
    let own = nice_of(std::process::id())?;
    let pool = start(pool::<A>(m, 2).worker_nice(7)).await?;
    for w in 0..2 {
        let Out::Pid(pid) = pool
            .call_to(w, Task::Pid)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Err("not a pid".into());
        };
        let nice = nice_of(pid)?;
        ensure!(nice == 7, "worker {w} runs at nice {nice}, not 7");
    }
    ensure!(
        nice_of(std::process::id())? == own,
        "the parent's priority changed"
    );
    stop_gracefully(&pool).await
}
