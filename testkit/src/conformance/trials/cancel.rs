//! Trials of cancellation and deadlines: an aborted task or a dropped call stops running in its
//! worker and frees its place at once; a deadline cancels; a worker that never yields to a
//! cancellation is replaced and its other tasks are sent again; `try_call` never waits.

use super::*;
use looppool_core::CallError;

/// Waits until `path` exists and holds at least `bytes` bytes: the task that writes it is
/// running.
pub(super) async fn ticking<A: Adapter>(path: &std::path::Path, bytes: u64) -> Outcome {
    let runtime = A::runtime();
    let grown = async {
        while std::fs::metadata(path).map_or(true, |m| m.len() < bytes) {
            runtime.sleep(Duration::from_millis(5)).await;
        }
    };
    within(
        &*A::runtime(),
        Duration::from_secs(10),
        "the ticking task",
        grown,
    )
    .await
}

pub(super) async fn an_aborted_task_stops_in_its_worker_and_frees_its_place_at_once<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let path = temp_path("abort-tick", m);
    let _ = std::fs::remove_file(&path);
    let pool = start(pool::<A>(m, 1).concurrency(1).capacity(1)).await?;
    let tick = pool
        .submit(Task::Tick(path.display().to_string()))
        .await
        .map_err(|e| e.to_string())?;
    ticking::<A>(&path, 3).await?;
    ensure!(tick.abort(), "the running task was not cancelled");
    // Its place is free before the worker has even read the cancellation.
    let next = pool
        .try_submit(Task::WhoAmI)
        .map_err(|e| format!("the cancelled task still holds its place: {e}"))?;
    let ended = within(
        &*A::runtime(),
        Duration::from_secs(5),
        "the aborted handle",
        tick,
    )
    .await?;
    ensure!(
        ended == Err(TaskError::Cancelled),
        "the aborted task ended with {ended:?}"
    );
    // With one task at a time, the next task runs only once the cancelled one was dropped.
    let outputs = pool.outputs();
    let (next, _) = draining(&outputs, async {
        within(
            &*A::runtime(),
            Duration::from_secs(10),
            "the next task",
            next,
        )
        .await
    })
    .await;
    ensure!(next? == Ok(()), "the next task did not complete");
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    let _ = std::fs::remove_file(&path);
    stop_gracefully(&pool).await?;
    ensure!(
        !path.exists(),
        "the cancelled task went on ticking after {size} bytes"
    );
    Ok(())
}

pub(super) async fn a_dropped_call_cancels_its_task_in_the_worker<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let path = temp_path("drop-tick", m);
    let _ = std::fs::remove_file(&path);
    let pool = start(pool::<A>(m, 1).concurrency(1)).await?;
    let runtime = A::runtime();
    // A client that gives up: the call's future is dropped while its task ticks.
    let call = pool.call(Task::Tick(path.display().to_string()));
    let watch = ticking::<A>(&path, 3);
    match select(pin!(call), pin!(watch)).await {
        Either::Left((ended, _)) => return Err(format!("the ticking call ended: {ended:?}")),
        Either::Right((seen, _)) => seen?,
    }
    // The worker runs one task at a time: this answers only once the ticking one is gone.
    let answer = within(
        &*runtime,
        Duration::from_secs(10),
        "a call after the dropped one",
        pool.call(Task::WhoAmI),
    )
    .await?;
    ensure!(
        matches!(answer, Ok(Out::Worker(0))),
        "the call after the dropped one: {answer:?}"
    );
    let _ = std::fs::remove_file(&path);
    stop_gracefully(&pool).await
}

pub(super) async fn a_call_deadline_cancels_its_task_and_submit_deadlines_time_out<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 1).concurrency(1)).await?;
    let runtime = A::runtime();
    let limit = Duration::from_millis(200);
    let late = within(
        &*runtime,
        Duration::from_secs(10),
        "a call with a deadline",
        pool.call_timeout(Task::Sleep(600_000), limit),
    )
    .await?;
    ensure!(
        matches!(late, Err(CallError::TimedOut { after, .. }) if after == limit),
        "a call past its deadline: {late:?}"
    );
    let handle = pool
        .submit_timeout(Task::Sleep(600_000), limit)
        .await
        .map_err(|e| e.to_string())?;
    let ended = within(&*runtime, Duration::from_secs(10), "a deadline", handle).await?;
    ensure!(
        ended == Err(TaskError::TimedOut { after: limit }),
        "a task past its deadline ended with {ended:?}"
    );
    // The worker (one task at a time) dropped both: it answers at once.
    let answer = within(
        &*runtime,
        Duration::from_secs(10),
        "a call after the deadlines",
        pool.call(Task::WhoAmI),
    )
    .await?;
    ensure!(matches!(answer, Ok(Out::Worker(0))), "then: {answer:?}");
    stop_gracefully(&pool).await
}

pub(super) async fn try_call_fails_at_once_when_no_worker_has_room<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 1).capacity(1)).await?;
    let busy = pool
        .submit(Task::Sleep(600_000))
        .await
        .map_err(|e| e.to_string())?;
    let refused = futures_util::FutureExt::now_or_never(pool.try_call(Task::WhoAmI));
    ensure!(
        matches!(refused, Some(Err(CallError::Full))),
        "try_call with no room: {refused:?}"
    );
    busy.abort();
    let answer = within(
        &*A::runtime(),
        Duration::from_secs(10),
        "try_call with room",
        pool.try_call(Task::WhoAmI),
    )
    .await?;
    ensure!(
        matches!(answer, Ok(Out::Worker(0))),
        "try_call with room: {answer:?}"
    );
    stop_gracefully(&pool).await
}

pub(super) async fn a_worker_that_never_yields_to_a_cancel_is_replaced_and_its_other_tasks_run_elsewhere<
    A: Adapter,
>(
    m: StartMethod,
) -> Outcome {
    let flag = temp_path("never-yields", m);
    let _ = std::fs::remove_file(&flag);
    let pool = start(
        pool::<A>(m, 2)
            .concurrency(2)
            .cancel_grace(Some(Duration::from_millis(300))),
    )
    .await?;
    let outputs = pool.outputs();
    let before = pool.pid(0);
    let (result, _) = draining(&outputs, async {
        let stuck = pool
            .submit_to(0, Task::SpinUntilExists(flag.display().to_string()))
            .await
            .map_err(|e| e.to_string())?;
        let bystander = pool
            .submit_to(0, Task::Double(21))
            .await
            .map_err(|e| e.to_string())?;
        // The bystander may finish before the spin starts; hold one that cannot.
        let held = pool
            .submit_to(0, Task::Sleep(200))
            .await
            .map_err(|e| e.to_string())?;
        // Cancelled before the worker polls it, it would never spin: wait until it does.
        let spinning = std::path::PathBuf::from(format!("{}.spinning", flag.display()));
        ticking::<A>(&spinning, 0).await?;
        ensure!(stuck.abort(), "the spinning task was not cancelled");
        let stuck = within(
            &*A::runtime(),
            Duration::from_secs(5),
            "the aborted spin",
            stuck,
        )
        .await?;
        ensure!(
            stuck == Err(TaskError::Cancelled),
            "the spinning task ended with {stuck:?}"
        );
        for (what, mut handle) in [("bystander", bystander), ("sleeper", held)] {
            let ended = within(&*A::runtime(), Duration::from_secs(20), what, &mut handle).await?;
            ensure!(
                ended.is_ok(),
                "the {what} on the stuck worker ended with {ended:?} after {} attempts",
                handle.attempts()
            );
        }
        Ok::<_, String>(())
    })
    .await;
    // Frees a spinner that would outlive the trial (a thread worker, or a failed kill).
    let _ = std::fs::write(&flag, b"done");
    let _ = std::fs::remove_file(format!("{}.spinning", flag.display()));
    result?;
    let after = stats_until::<A>(&pool, "worker 0 replaced", |s| {
        s.workers[0].restarts >= 1 && s.workers[0].pid.is_some()
    })
    .await?;
    ensure!(
        after.workers[0].pid != before,
        "worker 0 was not replaced: pid {before:?} still"
    );
    let _ = std::fs::remove_file(&flag);
    stop_gracefully(&pool).await
}
