//! The trials. Each proves one behaviour and fails with a message saying what differed.

use super::{within, Adapter, Out, Outcome, Probe, ProbeError, Task};
use futures_util::future::{join_all, select, Either, LocalBoxFuture};
use looppool_core::{Builder, Outputs, Pool, PoolStats, StartMethod, TaskId};

/// A handle on a [`Probe`]'s task.
type TaskHandle = looppool_core::TaskHandle<ProbeError>;
/// How a [`Probe`]'s task failed.
type TaskError = looppool_core::TaskError<ProbeError>;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

// The trials name these as `super::…`, which from a topic module is this one.
use super::{method_name, probe, PARENT_VAR};

use basics::*;
use cancel::*;
use config::*;
use faults::*;
use flow::*;
use frames::*;
use launches::*;
use observe::*;
use processes::*;
use recovery::*;
use routing::*;
use stream::*;

pub(super) use processes::parent_until_killed;

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

// After the macros, which they use.
mod basics;
mod cancel;
mod config;
mod faults;
mod flow;
mod frames;
mod launches;
mod observe;
mod processes;
mod recovery;
mod routing;
mod stream;

pub(super) fn all<A: Adapter>() -> Vec<(&'static str, Scope, Body)> {
    table![
        ten_tasks_through_eight_workers_come_back_doubled: All,
        stop_after_k_tasks_ends_every_task_and_delivers_every_output: All,
        a_full_worker_refuses_try_submit_and_submit_waits_for_room: All,
        round_robin_gives_each_of_8_workers_100_of_800_tasks: All,
        least_loaded_never_queues_a_short_task_behind_a_busy_worker: All,
        a_key_stays_on_its_worker_number_through_a_respawn: All,
        an_aborted_task_stops_in_its_worker_and_frees_its_place_at_once: All,
        a_dropped_call_cancels_its_task_in_the_worker: All,
        the_worker_configuration_reaches_every_init_and_every_replacement: All,
        a_worker_configuration_that_cannot_be_used_fails_the_start_clearly: Once,
        a_streamed_call_yields_every_output_then_the_tasks_end: All,
        a_dropped_stream_cancels_its_task_in_the_worker: All,
        the_pool_serves_as_a_tower_service: All,
        a_call_deadline_cancels_its_task_and_submit_deadlines_time_out: All,
        try_call_fails_at_once_when_no_worker_has_room: All,
        a_worker_that_never_yields_to_a_cancel_is_replaced_and_its_other_tasks_run_elsewhere: Processes,
        a_broadcast_after_k_tasks_reaches_every_worker_once_in_order: All,
        targeted_tasks_reach_their_worker: All,
        errors_and_panics_reach_the_parent_and_the_worker_goes_on: All,
        result_credit_bounds_unacknowledged_outputs_and_loses_nothing: All,
        a_consumer_holding_outputs_while_it_waits_for_more_is_not_starved: All,
        outputs_are_flushed_before_the_next_cpu_bound_task_starts: All,
        values_that_cannot_be_encoded_are_refused_at_the_call: All,
        a_bad_frame_from_a_worker_ends_only_its_link_with_a_clear_error: All,
        a_protocol_version_mismatch_fails_the_start_clearly: All,
        a_failing_init_hook_fails_the_start_clearly: All,
        stop_racing_submissions_ends_every_accepted_task: All,
        a_killed_worker_loses_its_tasks_with_the_signal_and_others_go_on: Processes,
        dropping_a_pool_leaves_no_worker_process: Processes,
        clones_of_a_pool_share_its_workers_and_only_the_last_drop_kills_them: Processes,
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
        a_pool_outliving_its_runtime_writes_to_no_socket_it_no_longer_owns: Once,
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
