//! Trials of recovery: replacement, the restart limit, retries, timeouts, stalls, recycling,
//! the stop deadline, and random kills.

use super::*;
use looppool_core::{CallError, Exit, SubmitError};

pub(super) async fn a_dead_worker_is_replaced_under_its_number_with_its_sticky_state<A: Adapter>(
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

pub(super) async fn a_worker_that_cannot_start_is_given_up_after_the_restart_limit<A: Adapter>(
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

pub(super) async fn a_lost_task_is_retried_on_a_live_worker<A: Adapter>(m: StartMethod) -> Outcome {
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

pub(super) async fn a_task_past_its_timeout_is_cancelled_and_its_worker_goes_on<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 1).task_timeout(Duration::from_millis(100))).await?;
    let pid = pool.pid(0);
    match pool.call(Task::Sleep(60_000)).await {
        Err(CallError::TimedOut { after, .. }) => {
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

pub(super) async fn a_worker_stuck_in_cpu_bound_code_is_killed_and_only_its_tasks_are_lost<
    A: Adapter,
>(
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

pub(super) async fn a_worker_is_recycled_after_its_task_limit_without_losing_a_task<A: Adapter>(
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

pub(super) async fn a_worker_over_its_memory_limit_is_recycled<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 1).recycle_above_rss(256 << 20)).await?;
    let first = pool.pid(0);
    let no_output = |r: Result<Out, CallError<ProbeError>>| match r {
        Err(CallError::NoOutput { .. }) => Ok(()),
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

pub(super) async fn the_stop_deadline_kills_stragglers_and_their_tasks_are_lost<A: Adapter>(
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

pub(super) async fn thousands_of_tasks_survive_random_worker_kills<A: Adapter>(
    m: StartMethod,
) -> Outcome {
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
