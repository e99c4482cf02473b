//! Trials of cancellation: a handle aborted, a call dropped or timed out, a task cancelled
//! before its member received it.

use super::{check, quick, shared_url, stop_all, Deadline, Failed, Spec};
use futures_util::FutureExt;
use looppool_nats::{CallError, Pool, TaskError};
use looppool_testkit::conformance::{Probe, Task};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A file the trial's tasks tick into, removed first.
fn tick_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "looppool-nats-cancel-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Waits until a ticking task has written to `path`: it runs.
async fn runs(path: &Path, what: &'static str) -> Result<(), Failed> {
    let wait = Deadline::new(what, Duration::from_secs(10));
    while size(path) < 2 {
        wait.tick().await?;
    }
    Ok(())
}

/// Waits until member `m` holds no task: it reported the end of every one, cancelled ones
/// included.
async fn drained(pool: &Pool<Probe>, what: &'static str) -> Result<(), Failed> {
    let wait = Deadline::new(what, Duration::from_secs(10));
    while pool.outstanding("m") != Some(0) {
        wait.tick().await?;
    }
    Ok(())
}

/// `paths` no longer grow: a task that ran on the member after they were measured saw them
/// unchanged.
async fn stopped(pool: &Pool<Probe>, paths: &[&Path]) -> Result<(), Failed> {
    // A task's worker drops it at its next await, which may come after its end was reported;
    // the member's one worker process reads its frames in order, so once a task sent after
    // the cancels ran, the cancelled ones are dropped.
    pool.submit(Task::Sleep(100)).await?.await?;
    let before: Vec<u64> = paths.iter().map(|p| size(p)).collect();
    pool.submit(Task::Sleep(100)).await?.await?;
    let after: Vec<u64> = paths.iter().map(|p| size(p)).collect();
    check(before == after, || {
        format!("cancelled tasks still run: {before:?} bytes, then {after:?}")
    })
}

pub(super) async fn cancellation() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = quick(Pool::builder(&url, "cancel"))
        .backlog(3)
        .start()
        .await?;
    // One worker process, two tasks at a time: the consumer holds two, the backlog three.
    let members = vec![Spec::new(&url, "cancel").spawn("m")];
    pool.wait_for_members(1, Duration::from_secs(30)).await?;

    // A running task, aborted: its handle ends at once, and its member drops it.
    let ticked = tick_file("aborted");
    let handle = pool
        .submit(Task::Tick(ticked.display().to_string()))
        .await?;
    runs(&ticked, "the task to run").await?;
    check(handle.abort(), || "abort found the task ended".into())?;
    check(!handle.abort(), || {
        "a second abort found the task running".into()
    })?;
    match tokio::time::timeout(Duration::from_secs(5), handle).await {
        Ok(Err(TaskError::Cancelled)) => {}
        other => return Err(format!("an aborted task's handle: {other:?}").into()),
    }
    drained(&pool, "the member to report the aborted task's end").await?;

    // A call dropped early, one timed out, and a task submitted with a timeout.
    let dropped = tick_file("dropped");
    let mut call = Box::pin(pool.call(Task::Tick(dropped.display().to_string())));
    let wait = Deadline::new("the dropped call's task to run", Duration::from_secs(10));
    while size(&dropped) < 2 {
        // The call, polled meanwhile, does not end: its task ticks forever.
        if tokio::time::timeout(Duration::from_millis(20), &mut call)
            .await
            .is_ok()
        {
            return Err("a call of a task that never ends ended".into());
        }
        wait.tick().await?;
    }
    drop(call);
    let timed = tick_file("timed");
    match pool
        .call_timeout(
            Task::Tick(timed.display().to_string()),
            Duration::from_millis(300),
        )
        .await
    {
        Err(CallError::TimedOut { after, .. }) if after == Duration::from_millis(300) => {}
        other => return Err(format!("a call past its timeout: {other:?}").into()),
    }
    let slow = pool
        .submit_timeout(Task::Sleep(600_000), Duration::from_millis(300))
        .await?;
    match tokio::time::timeout(Duration::from_secs(5), slow).await {
        Ok(Err(TaskError::TimedOut { .. })) => {}
        other => return Err(format!("a task past its timeout: {other:?}").into()),
    }
    // Its member ended them all (a sleep of ten minutes would hold its place that long).
    drained(&pool, "the member to drop the tasks cancelled").await?;
    stopped(&pool, &[&ticked, &dropped, &timed]).await?;

    // A task cancelled before its member received it: the consumer holds two tasks that spin
    // until a gate opens, the third waits in the stream.
    let gate = tick_file("gate");
    let spin = || Task::SpinUntilExists(gate.display().to_string());
    let spinning = [pool.submit(spin()).await?, pool.submit(spin()).await?];
    let never = tick_file("never");
    let waiting = pool.submit(Task::Tick(never.display().to_string())).await?;
    check(waiting.abort(), || {
        "abort found the waiting task ended".into()
    })?;
    match tokio::time::timeout(Duration::from_secs(5), waiting).await {
        Ok(Err(TaskError::Cancelled)) => {}
        other => return Err(format!("a waiting task's handle: {other:?}").into()),
    }
    check(pool.outstanding("m") == Some(3), || {
        format!(
            "a cancelled task left its member's backlog before the member ended it: {:?}",
            pool.outstanding("m")
        )
    })?;
    std::fs::write(&gate, b"go")?;
    for h in spinning {
        h.await?;
    }
    drained(
        &pool,
        "the member to drop the task cancelled before it came",
    )
    .await?;
    check(!never.exists(), || {
        "a task cancelled before its member received it ran".into()
    })?;
    check(pool.refused() == 0, || {
        format!("{} messages refused", pool.refused())
    })?;
    let spun = PathBuf::from(format!("{}.spinning", gate.display()));
    for path in [&ticked, &dropped, &timed, &gate, &spun] {
        let _ = std::fs::remove_file(path);
    }
    stop_all(&pool, members).await
}

/// A task cancelled while its member is stopped, then killed, is dropped when taken back from
/// it, never sent to the other member.
pub(super) async fn cancelled_task_of_a_dead_member() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = quick(Pool::builder(&url, "cancel-dead")).start().await?;
    let mut events = pool.events();
    let spec = Spec::new(&url, "cancel-dead");
    let mut members = vec![spec.spawn("a"), spec.spawn("b")];
    pool.wait_for_members(2, Duration::from_secs(30)).await?;
    let ticked = tick_file("dead");
    let handle = pool
        .submit(Task::Tick(ticked.display().to_string()))
        .await?;
    runs(&ticked, "the task to run").await?;
    let holder = handle.member().ok_or("no member holds the task")?;
    let k = members
        .iter()
        .position(|m| m.name == holder)
        .ok_or("an unknown holder")?;
    let mut dead = members.remove(k);
    // Stopped, it cannot drop the task; killed, it never will.
    dead.signal(nix::sys::signal::Signal::SIGSTOP);
    check(handle.abort(), || "abort found the task ended".into())?;
    match handle.await {
        Err(TaskError::Cancelled) => {}
        other => return Err(format!("an aborted task's handle: {other:?}").into()),
    }
    dead.kill();
    let wait = Deadline::new(
        "the killed member to be counted gone",
        Duration::from_secs(30),
    );
    loop {
        match events.recv().now_or_never() {
            Some(Some(looppool_nats::MemberEvent::Left { member, .. })) if member == holder => {
                break
            }
            Some(Some(_)) => continue,
            Some(None) => return Err("the pool's events ended".into()),
            None => wait.tick().await?,
        }
    }
    // The stop waits for every task to end: the cancelled one ends when it is taken back (a
    // task moved to the other member would tick forever).
    let stopped = tokio::time::timeout(Duration::from_secs(30), pool.stop())
        .await
        .map_err(|_| {
            format!(
                "stop did not return within 30 s; the other member holds {:?} tasks",
                pool.outstanding(&members[0].name)
            )
        })?;
    check(stopped.unresponsive.is_empty(), || {
        format!("members did not leave: {:?}", stopped.unresponsive)
    })?;
    let other = members.pop().ok_or("no other member")?;
    let (code, text) = other.exit(Duration::from_secs(10)).await?;
    check(code == 0 && text.contains("left after 0 tasks ("), || {
        format!("the other member exited {code}: {text}")
    })?;
    let _ = std::fs::remove_file(&ticked);
    Ok(())
}
