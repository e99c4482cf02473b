//! Trials of the ordinary path: tasks through workers, submission and room, routing,
//! broadcasts, errors and panics, and a stop racing submissions.

use super::*;
use looppool_core::{CallError, SubmitError};

pub(super) async fn ten_tasks_through_eight_workers_come_back_doubled<A: Adapter>(
    m: StartMethod,
) -> Outcome {
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

pub(super) async fn stop_after_k_tasks_ends_every_task_and_delivers_every_output<A: Adapter>(
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

pub(super) async fn a_full_worker_refuses_try_submit_and_submit_waits_for_room<A: Adapter>(
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

pub(super) async fn a_broadcast_after_k_tasks_reaches_every_worker_once_in_order<A: Adapter>(
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

pub(super) async fn targeted_tasks_reach_their_worker<A: Adapter>(m: StartMethod) -> Outcome {
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

pub(super) async fn errors_and_panics_reach_the_parent_and_the_worker_goes_on<A: Adapter>(
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
        Err(TaskError::Failed(ProbeError::Message(message))) => {
            ensure!(message == "the disk is full", "message {message:?}")
        }
        other => {
            return Err(format!(
                "task {failing_id}: expected a failure, got {other:?}"
            ))
        }
    }
    // The worker's own error type arrives as a value, through a handle and through a call.
    let refused = pool
        .submit_to(0, Task::Refuse(7))
        .await
        .map_err(|e| e.to_string())?
        .await;
    ensure!(
        refused == Err(TaskError::Failed(ProbeError::Refused { code: 7 })),
        "a typed error through a handle: {refused:?}"
    );
    match pool.call_to(0, Task::Refuse(9)).await {
        Err(CallError::Failed {
            error: ProbeError::Refused { code: 9 },
            task,
        }) if task > failing_id => {}
        other => return Err(format!("a typed error through a call: {other:?}")),
    }
    // An error the worker cannot encode arrives as its text; one whose decoding panics in the
    // parent fails its own task only.
    for (task, expected) in [
        (Task::FailUnencodable, "an error that refuses to be encoded"),
        (Task::FailUndecodable, "Grumpy refuses to be decoded"),
    ] {
        let ended = pool
            .submit_to(0, task)
            .await
            .map_err(|e| e.to_string())?
            .await;
        ensure!(
            matches!(&ended, Err(TaskError::Codec { message }) if message.contains(expected)),
            "expected a codec error saying {expected:?}, got {ended:?}"
        );
    }
    match pool.call_to(0, Task::Panic("kaboom".into())).await {
        Err(CallError::Panicked { message, .. }) => {
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

pub(super) async fn stop_racing_submissions_ends_every_accepted_task<A: Adapter>(
    m: StartMethod,
) -> Outcome {
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
