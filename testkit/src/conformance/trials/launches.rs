//! Trials of the pool across a worker's deaths and replacements and its own stops: what
//! lost tasks say, result credit across incarnations, workers killed again and again, stops,
//! kills and drops while a replacement launches, and a stop with nobody reading.

use super::*;
use looppool_core::CallError;
use std::future::Future;

pub(super) async fn lost_tasks_say_what_killed_their_worker<A: Adapter>(m: StartMethod) -> Outcome {
    let runtime = A::runtime();
    let cause_of = |r: Result<(), TaskError>| match r {
        Err(TaskError::Lost { cause, .. }) => cause.unwrap_or_default(),
        other => format!("not lost: {other:?}"),
    };
    // kill_worker, then the stop deadline.
    let first = start(pool::<A>(m, 2).stop_timeout(Duration::from_millis(300))).await?;
    let on_0 = first
        .submit_to(0, Task::Sleep(600_000))
        .await
        .map_err(|e| e.to_string())?;
    let on_1 = first
        .submit_to(1, Task::Sleep(600_000))
        .await
        .map_err(|e| e.to_string())?;
    first.kill_worker(0);
    let cause = cause_of(within(&*runtime, Duration::from_secs(10), "kill_worker", on_0).await?);
    ensure!(
        cause.contains("kill_worker"),
        "after kill_worker: {cause:?}"
    );
    let stopped = within(&*runtime, Duration::from_secs(10), "stop", first.stop()).await?;
    ensure!(!stopped.is_graceful(), "{stopped:?}");
    let cause = cause_of(within(&*runtime, Duration::from_secs(1), "the deadline", on_1).await?);
    ensure!(
        cause.contains("stop deadline"),
        "at the stop deadline: {cause:?}"
    );
    // kill().
    let second = start(pool::<A>(m, 1)).await?;
    let held = second
        .submit_to(0, Task::Sleep(600_000))
        .await
        .map_err(|e| e.to_string())?;
    second.kill();
    let cause = cause_of(within(&*runtime, Duration::from_secs(10), "kill", held).await?);
    ensure!(cause.contains("kill()"), "after kill(): {cause:?}");
    let stopped = within(&*runtime, Duration::from_secs(10), "stop", second.stop()).await?;
    ensure!(!stopped.is_graceful(), "kill() then stop(): {stopped:?}");
    // kill() while a graceful stop waits for a task that will not end.
    let third = start(pool::<A>(m, 1)).await?;
    let held = third
        .submit_to(0, Task::Sleep(600_000))
        .await
        .map_err(|e| e.to_string())?;
    let (stopped, ()) = within(
        &*runtime,
        Duration::from_secs(10),
        "a stop cut short by kill()",
        futures_util::future::join(third.stop(), async { third.kill() }),
    )
    .await?;
    ensure!(!stopped.is_graceful(), "stop() then kill(): {stopped:?}");
    let cause = cause_of(within(&*runtime, Duration::from_secs(1), "kill", held).await?);
    ensure!(
        cause.contains("kill()"),
        "after stop() then kill(): {cause:?}"
    );
    Ok(())
}

pub(super) async fn result_credit_spans_a_workers_incarnations<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let runtime = A::runtime();
    let pool = start(pool::<A>(m, 1).result_credit(4)).await?;
    let outputs = pool.outputs();
    // Nobody reads: the first incarnation spends its credit of 4 and waits for more.
    let blocked = pool
        .submit_to(0, Task::Emit(10))
        .await
        .map_err(|e| e.to_string())?;
    let queued = async {
        while pool.stats().workers[0].unacked < 4 {
            runtime.sleep(Duration::from_millis(10)).await;
        }
    };
    within(
        &*runtime,
        Duration::from_secs(10),
        "four unread outputs",
        queued,
    )
    .await?;
    pool.kill_worker(0);
    let lost = within(
        &*runtime,
        Duration::from_secs(10),
        "the killed task",
        blocked,
    )
    .await?;
    ensure!(lost.is_err(), "the killed worker's task: {lost:?}");
    // Its replacement inherits no fresh credit while those 4 are unread.
    let tried = within(
        &*runtime,
        Duration::from_secs(10),
        "the replacement's try_put",
        pool.call_to(0, Task::TryEmit { n: 4, accepted: 0 }),
    )
    .await?;
    ensure!(
        matches!(tried, Err(CallError::NoOutput { .. })),
        "the replacement emitted with 4 outputs unread: {tried:?}"
    );
    // Reading the old outputs returns their credit to the replacement.
    let mut old = Vec::new();
    while let Some(d) = outputs.try_recv() {
        old.push(d.into_value());
    }
    ensure!(old.len() == 4, "{} outputs queued, not 4", old.len());
    let (emitted, seen) = draining(
        &outputs,
        within(
            &*runtime,
            Duration::from_secs(10),
            "emitting after the reads",
            pool.call_to(0, Task::Emit(4)),
        ),
    )
    .await;
    // A call keeps its outputs: the first is its reply, the others were discarded.
    ensure!(
        matches!(emitted, Ok(Ok(Out::Seq(0)))),
        "after the reads: {emitted:?} (stream {seen:?})"
    );
    stop_gracefully(&pool).await
}

pub(super) async fn a_worker_that_served_is_replaced_however_often_it_is_killed<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    // The default restart policy: 5 quick failures within 60 s give a number up.
    let pool = start(pool::<A>(m, 2)).await?;
    for round in 0..8 {
        let answer = within(
            &*A::runtime(),
            Duration::from_secs(30),
            "a task before the kill",
            pool.call_to(0, Task::WhoAmI),
        )
        .await?;
        ensure!(
            matches!(answer, Ok(Out::Worker(0))),
            "round {round}: worker 0 answered {answer:?}"
        );
        kill(&pool, 0).await?;
    }
    let answer = within(
        &*A::runtime(),
        Duration::from_secs(30),
        "the last replacement",
        pool.call_to(0, Task::WhoAmI),
    )
    .await?;
    ensure!(
        matches!(answer, Ok(Out::Worker(0))),
        "after 8 kills worker 0 answered {answer:?}: {:?}",
        pool.stats().workers[0].given_up_until
    );
    stop_gracefully(&pool).await
}

/// This process's children whose short name says they are workers of pool `pool`, zombies
/// included.
fn workers_of(pool: &str) -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let comm = head.split_once('(').map_or("", |(_, c)| c);
            let ppid = rest.split_whitespace().nth(1).unwrap_or("");
            ppid == me && comm.starts_with("lp") && comm.ends_with(&format!("-{pool}"))
        })
        .collect()
}

/// Runs `body` with every newly launched probe waiting a minute in its init hook; `body` gets
/// the file each one appends a byte to when its wait begins.
async fn with_slow_inits<F: Future<Output = Outcome>>(
    m: StartMethod,
    body: impl FnOnce(std::path::PathBuf) -> F,
) -> Outcome {
    let marker = temp_path("slow-init", m);
    std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
    std::env::set_var(super::super::probe::SLOW_INIT_VAR, &marker);
    let outcome = body(marker.clone()).await;
    std::env::remove_var(super::super::probe::SLOW_INIT_VAR);
    let _ = std::fs::remove_file(&marker);
    outcome
}

pub(super) async fn stop_kill_and_drop_keep_their_deadlines_while_a_replacement_launches<
    A: Adapter,
>(
    m: StartMethod,
) -> Outcome {
    let runtime = A::runtime();
    let name = "slowinit";
    for how in ["stop", "kill", "drop"] {
        let runtime: &dyn looppool_core::Runtime = &*runtime;
        let pool = start(
            pool::<A>(m, 2)
                .name(name)
                .stop_timeout(Duration::from_secs(1)),
        )
        .await?;
        let outcome = with_slow_inits(m, |marker| async move {
            // Its replacement waits a minute in its init hook.
            kill(&pool, 0).await?;
            let waiting = async {
                while std::fs::metadata(&marker).map_or(0, |m| m.len()) == 0 {
                    runtime.sleep(Duration::from_millis(10)).await;
                }
            };
            within(
                runtime,
                Duration::from_secs(10),
                "the slow replacement",
                waiting,
            )
            .await?;
            let started = std::time::Instant::now();
            match how {
                "stop" => {
                    within(runtime, Duration::from_secs(5), "stop", pool.stop()).await?;
                }
                "kill" => {
                    pool.kill();
                    within(
                        runtime,
                        Duration::from_secs(5),
                        "kill, then stop",
                        pool.stop(),
                    )
                    .await?;
                }
                _ => drop(pool),
            }
            let took = started.elapsed();
            ensure!(
                took < Duration::from_secs(5),
                "{how} took {took:?} while a replacement launched"
            );
            Ok(())
        })
        .await;
        outcome?;
        if m != StartMethod::Thread {
            // The replacement was killed and reaped, not left to finish its init.
            let left = async {
                while !workers_of(name).is_empty() {
                    runtime.sleep(Duration::from_millis(10)).await;
                }
            };
            within(
                runtime,
                Duration::from_secs(5),
                "the replacement's end",
                left,
            )
            .await
            .map_err(|e| format!("after {how}: {e}: {:?}", workers_of(name)))?;
        }
    }
    Ok(())
}

pub(super) async fn a_start_dropped_half_way_leaves_no_process<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let runtime = A::runtime();
    let name = "dropstart";
    with_slow_inits(m, |_| async move {
        let starting = start(pool::<A>(m, 3).name(name));
        match select(pin!(starting), runtime.sleep(Duration::from_millis(500))).await {
            Either::Left((started, _)) => {
                return Err(format!(
                    "a pool whose inits wait a minute started: {started:?}"
                ))
            }
            Either::Right(_) => {}
        }
        // Dropping the start kills and reaps whatever it launched, before it returns.
        let left = workers_of(name);
        ensure!(
            left.is_empty(),
            "processes left by the dropped start: {left:?}"
        );
        Ok(())
    })
    .await
}

pub(super) async fn a_stop_with_nobody_reading_finishes_within_the_stop_backlog<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let runtime = A::runtime();
    for (backlog, graceful) in [(None, true), (Some(4), false)] {
        // Room for all 20 tasks at once: nobody reads, so none ends before the stop.
        let mut builder = pool::<A>(m, 2)
            .capacity(10)
            .result_credit(2)
            .stop_timeout(Duration::from_secs(3));
        if let Some(backlog) = backlog {
            builder = builder.stop_backlog(backlog);
        }
        let pool = start(builder).await?;
        // 20 tasks of 3 outputs each, and nobody reads until the stop is over.
        let mut handles = Vec::new();
        for _ in 0..20 {
            handles.push(
                pool.submit(Task::Emit(3))
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let stopped = within(&*runtime, Duration::from_secs(10), "stop", pool.stop()).await?;
        let ended = join_all(handles).await;
        let ok = ended.iter().filter(|r| r.is_ok()).count();
        let outputs = pool.outputs();
        let mut per_worker = [0usize; 2];
        while let Some(d) = outputs.try_recv() {
            per_worker[d.worker()] += 1;
        }
        if graceful {
            // The default backlog covers them all: every task finishes, every output waits.
            ensure!(
                stopped.is_graceful() && ok == 20 && per_worker[0] + per_worker[1] == 60,
                "default backlog: {stopped:?}, {ok} of 20 tasks ended well, outputs {per_worker:?}"
            );
        } else {
            // A backlog of 4: at most 2 + 4 unread outputs per worker; the rest waits for a
            // consumer that never comes, until the stop timeout.
            ensure!(
                per_worker.iter().all(|&n| n <= 6) && !stopped.is_graceful() && ok < 20,
                "a backlog of 4: {stopped:?}, {ok} of 20 ended well, outputs {per_worker:?}"
            );
        }
    }
    Ok(())
}
