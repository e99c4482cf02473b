//! Trials of the pool's guarantees under faults real programs meet: workers that start
//! programs or fork helpers and die, recycling under load, outputs whose decoding panics,
//! absurd reports, frames that stop half-way, outputs claiming another worker's task.

use super::*;
use crate::conformance::{ExitingInit, TouchyWorker, TOUCHY_LIVE, TOUCHY_PANIC};
use std::future::Future;
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
        Err(TaskError::Lost {
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
        matches!(tried, Err(CallError::NoOutput(_))),
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
