//! Trials of what the parent sees of its workers: statistics, blocked loops, and logs.

use super::*;
use crate::conformance::capture::{captured, Captured, USER_TARGET};

pub(super) async fn workers_report_cpu_memory_lag_and_task_counts<A: Adapter>(
    m: StartMethod,
) -> Outcome {
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

pub(super) async fn a_blocked_loop_is_reported_with_its_worker_and_tasks<A: Adapter>(
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
    let _ = std::fs::remove_file(format!("{}.spinning", release.display()));
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

pub(super) async fn worker_log_events_and_panics_reach_the_parent_tagged<A: Adapter>(
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
    // A call's task id is in the caller's logs (`looppool::call`) and in the worker's.
    let joined = match pool.call_to(1, Task::Log("joined by its id".into())).await {
        Err(looppool_core::CallError::NoOutput { task }) => task,
        other => return Err(format!("a call that logs and emits nothing: {other:?}")),
    };
    let from_pool = |e: &Captured| e.field("pool") == name && !e.field("task").is_empty();
    // A relayed event is emitted when its frame arrives, which may be after the task's end.
    let wait = async {
        loop {
            let events = captured(from_pool);
            let has = |text: &str| events.iter().any(|e| e.field("message").contains(text));
            let placed = events.iter().any(|e| {
                e.target == "looppool::call"
                    && e.field("task") == joined.to_string()
                    && e.field("worker") == "1"
            });
            let relayed = events.iter().any(|e| {
                e.field("message").contains("joined by its id")
                    && e.field("task") == joined.to_string()
            });
            if has("answer=42")
                && has("debug: hello")
                && has("a forwarded panic")
                && placed
                && relayed
            {
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
    let info = events.iter().find(|e| {
        let message = e.field("message");
        message.contains("hello from a task") && message.contains("answer=42")
    });
    ensure!(
        info.is_some_and(|e| e.level == tracing::Level::INFO
            && e.field("worker") == "1"
            && e.field("task") == log_id.to_string()
            && e.field("message").contains("answer=42")
            && e.target.starts_with("looppool_testkit::")),
        "the task's event keeps its worker-side target: {events:#?}"
    );
    // The parent keeps DEBUG only for the probe's user target, as `RUST_LOG` would: the
    // worker's event passes that filter because it is relayed under its own target.
    let user = events
        .iter()
        .find(|e| e.field("message").contains("debug: hello from a task"));
    ensure!(
        user.is_some_and(|e| e.level == tracing::Level::DEBUG
            && e.target == USER_TARGET
            && e.field("worker") == "1"
            && e.field("task") == log_id.to_string()),
        "the event under the user's target: {events:#?}"
    );
    let panic = events
        .iter()
        .find(|e| e.field("message").contains("a forwarded panic"));
    ensure!(
        panic.is_some_and(|e| e.level == tracing::Level::ERROR
            && e.target == "looppool::panic"
            && e.field("worker") == "0"
            && e.field("task") == panic_id.to_string()),
        "the panic's event: {events:#?}"
    );
    stop_gracefully(&pool).await
}
