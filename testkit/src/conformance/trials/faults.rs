//! Trials of the pool's guarantees under faults real programs meet: workers that start
//! programs or fork helpers and die, recycling under load, outputs whose decoding panics,
//! absurd reports, frames that stop half-way, outputs claiming another worker's task.

use super::*;
use crate::conformance::capture::captured;
use crate::conformance::{ExitingInit, TouchyWorker, TOUCHY_LIVE, TOUCHY_PANIC};
use looppool_core::Exit;
use std::sync::atomic::Ordering;

/// Kills a process this trial caused to exist, when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Worker 1 leaves something behind that holds its link open (`leave` gives the pid), then
/// exits with code 3: its task must end as lost with that code at once, its replacement must
/// serve, and the stop must keep its deadline.
async fn dies_leaving<A: Adapter>(m: StartMethod, leave: Task) -> Outcome {
    let runtime = A::runtime();
    let pool = start(pool::<A>(m, 2).stop_timeout(Duration::from_secs(2))).await?;
    let left = match pool.call_to(1, leave).await {
        Ok(Out::Pid(pid)) => KillOnDrop(pid),
        other => return Err(format!("starting the helper: {other:?}")),
    };
    ensure!(is_alive(left.0), "the helper {} is not running", left.0);
    let exiting = pool
        .submit_to(1, Task::Exit(3))
        .await
        .map_err(|e| e.to_string())?;
    let ended = within(
        &*runtime,
        Duration::from_secs(10),
        "the exiting task",
        exiting,
    )
    .await?;
    ensure!(
        matches!(
            ended,
            Err(TaskError::Lost {
                worker: 1,
                exit: Exit::Code(3),
                ..
            })
        ),
        "the task whose worker exited ended with {ended:?}"
    );
    let again = within(
        &*runtime,
        Duration::from_secs(10),
        "a task for the replacement",
        pool.call_to(1, Task::WhoAmI),
    )
    .await?;
    ensure!(
        matches!(again, Ok(Out::Worker(1))),
        "the replacement answered {again:?}"
    );
    let stopped = within(&*runtime, Duration::from_secs(6), "stop", pool.stop()).await?;
    ensure!(stopped.is_graceful(), "{stopped:?}");
    ensure!(is_alive(left.0), "the helper should outlive its worker");
    Ok(())
}

pub(super) async fn a_worker_whose_program_outlives_it_is_seen_dead<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    dies_leaving::<A>(m, Task::Spawn(60)).await
}

pub(super) async fn a_worker_whose_forked_child_outlives_it_is_seen_dead<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    dies_leaving::<A>(m, Task::ForkSleeper(60)).await
}

pub(super) async fn recycling_under_load_loses_nothing_and_gives_up_nothing<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let name = format!("recycle-{}-{m:?}", A::NAME);
    let pool = start(pool::<A>(m, 2).name(name.clone()).recycle_after_tasks(50)).await?;
    let outputs = pool.outputs();
    // Two outputs a task, read at once: acknowledgements flow to each worker until it retires.
    let n = 1_500;
    let submitting = async {
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            handles.push(
                pool.submit(Task::Emit(2))
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        Ok::<_, String>(join_all(handles).await)
    };
    let (ended, seen) = draining(&outputs, submitting).await;
    let ended = ended?;
    let failed: Vec<_> = ended.iter().filter(|r| r.is_err()).collect();
    ensure!(
        failed.is_empty(),
        "{} of {n} tasks failed, first {:?}",
        failed.len(),
        failed[0]
    );
    ensure!(seen.len() == 2 * n, "{} outputs of {}", seen.len(), 2 * n);
    let stats = pool.stats();
    let restarts: u64 = stats.workers.iter().map(|w| w.restarts).sum();
    ensure!(
        restarts as usize >= n / 50 - 2,
        "{restarts} replacements for {n} tasks recycled every 50"
    );
    ensure!(
        stats
            .workers
            .iter()
            .all(|w| w.status != looppool_core::state::WorkerStatus::Exited),
        "a worker was given up: {:?}",
        stats.workers.iter().map(|w| w.status).collect::<Vec<_>>()
    );
    stop_gracefully(&pool).await?;
    // A retirement is an orderly end: nothing about it is an error.
    let errors = captured(|e| e.level <= tracing::Level::WARN && e.field("pool") == name);
    ensure!(
        errors.is_empty(),
        "{} warnings or errors while recycling, first {:?}",
        errors.len(),
        errors[0]
    );
    Ok(())
}

pub(super) async fn an_output_whose_decoding_panics_ends_only_its_link<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let runtime = A::runtime();
    let pool = builder_of::<A, TouchyWorker>(m, 2)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let poisoned = pool
        .submit_to(0, (TOUCHY_PANIC, 1))
        .await
        .map_err(|e| e.to_string())?;
    let ended = within(
        &*runtime,
        Duration::from_secs(10),
        "the poisoned task",
        poisoned,
    )
    .await?;
    match &ended {
        Err(looppool_core::TaskError::Lost {
            worker: 0,
            cause: Some(cause),
            ..
        }) if cause.contains("panicked") && cause.contains("Touchy refuses") => {}
        other => return Err(format!("the task whose output panicked: {other:?}")),
    }
    for k in [1, 0] {
        let value = within(
            &*runtime,
            Duration::from_secs(10),
            "a call after the panic",
            pool.call_to(k, (5, 1)),
        )
        .await?
        .map_err(|e| format!("worker {k} after the panic: {e}"))?;
        ensure!(value.value == 5, "worker {k} answered {}", value.value);
    }
    let stopped = within(&*runtime, Duration::from_secs(20), "stop", pool.stop()).await?;
    ensure!(stopped.is_graceful(), "{stopped:?}");
    Ok(())
}

pub(super) async fn a_pool_with_unread_outputs_is_freed_when_stopped_or_dropped<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let runtime = A::runtime();
    for dropped in [false, true] {
        let pool = builder_of::<A, TouchyWorker>(m, 2)
            .start()
            .await
            .map_err(|e| e.to_string())?;
        let before = TOUCHY_LIVE.load(Ordering::SeqCst);
        // Outputs reach the parent before their task's end: once it ended, all 8 are queued.
        let handle = pool.submit_to(0, (1, 8)).await.map_err(|e| e.to_string())?;
        handle.await.map_err(|e| e.to_string())?;
        let queued = TOUCHY_LIVE.load(Ordering::SeqCst) - before;
        ensure!(queued == 8, "{queued} outputs decoded and queued, not 8");
        if dropped {
            drop(pool);
        } else {
            pool.stop().await;
            drop(pool);
        }
        let freed = async {
            while TOUCHY_LIVE.load(Ordering::SeqCst) != before {
                runtime.sleep(Duration::from_millis(10)).await;
            }
        };
        let how = if dropped { "dropped" } else { "stopped" };
        within(
            &*runtime,
            Duration::from_secs(10),
            &format!("freeing the unread outputs of a {how} pool"),
            freed,
        )
        .await
        .map_err(|e| format!("{e} ({} still alive)", TOUCHY_LIVE.load(Ordering::SeqCst)))?;
    }
    Ok(())
}

pub(super) async fn an_absurd_report_from_a_worker_is_harmless<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let runtime = A::runtime();
    let pool = start(pool::<A>(m, 2)).await?;
    let pid = pool.pid(0);
    let faulted = within(
        &*runtime,
        Duration::from_secs(10),
        "the absurd report's task",
        pool.submit_to(0, Task::Fault(looppool_core::Fault::AbsurdStats)),
    )
    .await?
    .map_err(|e| e.to_string())?;
    within(&*runtime, Duration::from_secs(10), "its end", faulted)
        .await?
        .map_err(|e| e.to_string())?;
    let after = within(
        &*runtime,
        Duration::from_secs(10),
        "a call after the report",
        pool.call_to(0, Task::Double(2)),
    )
    .await?;
    ensure!(
        matches!(after, Ok(Out::Doubled(4))),
        "worker 0 then answered {after:?}"
    );
    ensure!(pool.pid(0) == pid, "worker 0 was replaced");
    let _ = pool.stats();
    // The parent carries a dead incarnation's counts over to its replacement's.
    kill(&pool, 0).await?;
    let again = within(
        &*runtime,
        Duration::from_secs(10),
        "the replacement",
        pool.call_to(0, Task::Double(3)),
    )
    .await?;
    ensure!(
        matches!(again, Ok(Out::Doubled(6))),
        "the replacement answered {again:?}"
    );
    // Its replacement's report adds to those counts.
    let pid = pool.pid(0);
    let faulted = pool
        .submit_to(0, Task::Fault(looppool_core::Fault::AbsurdStats))
        .await
        .map_err(|e| e.to_string())?;
    within(
        &*runtime,
        Duration::from_secs(10),
        "the second report",
        faulted,
    )
    .await?
    .map_err(|e| e.to_string())?;
    let after = within(
        &*runtime,
        Duration::from_secs(10),
        "a call after the second report",
        pool.call_to(0, Task::Double(4)),
    )
    .await?;
    ensure!(
        matches!(after, Ok(Out::Doubled(8))),
        "the replacement then answered {after:?}"
    );
    ensure!(pool.pid(0) == pid, "the replacement was replaced");
    let _ = pool.stats();
    stop_gracefully(&pool).await
}

pub(super) async fn a_frame_that_stops_half_way_ends_its_link_at_the_read_deadline<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let runtime = A::runtime();
    let pool = start(pool::<A>(m, 2).frame_timeout(Duration::from_millis(500))).await?;
    let stalled = pool
        .submit_to(0, Task::Fault(looppool_core::Fault::Stalled))
        .await
        .map_err(|e| e.to_string())?;
    let ended = within(
        &*runtime,
        Duration::from_secs(10),
        "the stalled link",
        stalled,
    )
    .await?;
    match &ended {
        Err(TaskError::Lost {
            worker: 0,
            cause: Some(cause),
            ..
        }) if cause.contains("frame") && cause.contains("500ms") => {}
        other => return Err(format!("the task on the stalled link: {other:?}")),
    }
    let after = within(
        &*runtime,
        Duration::from_secs(10),
        "the replacement",
        pool.call_to(0, Task::Double(1)),
    )
    .await?;
    ensure!(
        matches!(after, Ok(Out::Doubled(2))),
        "worker 0 then answered {after:?}"
    );
    stop_gracefully(&pool).await
}

pub(super) async fn an_output_claiming_another_workers_task_ends_the_liars_link<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let runtime = A::runtime();
    let pool = start(pool::<A>(m, 2)).await?;
    let outputs = pool.outputs();
    let honest = pool
        .submit_to(1, Task::Sleep(1_000))
        .await
        .map_err(|e| e.to_string())?;
    let target = honest.id();
    let liar = pool
        .submit_to(0, Task::PutAs(target))
        .await
        .map_err(|e| e.to_string())?;
    let (ended, seen) = draining(
        &outputs,
        within(&*runtime, Duration::from_secs(10), "both tasks", async {
            (liar.await, honest.await)
        }),
    )
    .await;
    let (lied, slept) = ended?;
    match &lied {
        Err(TaskError::Lost {
            worker: 0,
            cause: Some(cause),
            ..
        }) if cause.contains(&format!("task {target}")) => {}
        other => return Err(format!("the lying worker's task: {other:?}")),
    }
    ensure!(slept.is_ok(), "the honest task: {slept:?}");
    ensure!(
        seen.iter().all(|(_, task, _)| *task != Some(target)),
        "a forged output reached the consumer: {seen:?}"
    );
    stop_gracefully(&pool).await
}

pub(super) async fn an_init_that_exits_reports_its_exit_status<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let started = builder_of::<A, ExitingInit>(m, 1).start().await;
    match started {
        Err(e) if e.to_string().contains("exit code 9") => Ok(()),
        Err(e) => Err(format!("the start failed without the exit status: {e}")),
        Ok(_) => Err("a pool whose init exits started".into()),
    }
}
