//! Trials of members that fail, die, shut down or are refused, and of members whose workers
//! run smol or async-std.

use super::*;

pub(super) async fn failures() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = start(&url, "failures").await?;
    let spec = Spec::new(&url, "failures");
    let members = vec![spec.spawn("m")];
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let failed = pool.submit(Task::Fail("no luck".into())).await?.await;
    check(
        failed == Err(TaskError::Failed(ProbeError::Message("no luck".into()))),
        || format!("{failed:?}"),
    )?;
    // The worker's error arrives as its own type, as from a local pool.
    let refused = pool.submit(Task::Refuse(7)).await?.await;
    check(
        refused == Err(TaskError::Failed(ProbeError::Refused { code: 7 })),
        || format!("{refused:?}"),
    )?;
    // An error the member cannot encode, or whose decoding panics in the parent: the task
    // ends saying so, and the pool goes on.
    let unencodable = pool.submit(Task::FailUnencodable).await?.await;
    check(matches!(&unencodable, Err(TaskError::Codec { .. })), || {
        format!("{unencodable:?}")
    })?;
    let undecodable = pool.submit(Task::FailUndecodable).await?.await;
    check(
        matches!(&undecodable, Err(TaskError::Codec { message }) if message.contains("panicked")),
        || format!("{undecodable:?}"),
    )?;
    let panicked = pool.submit(Task::Panic("oops".into())).await?.await;
    check(
        matches!(&panicked, Err(TaskError::Panicked { message }) if message.contains("oops")),
        || format!("{panicked:?}"),
    )?;
    // The worker process dies inside its member: the task is lost with a reason naming it.
    let lost = pool.submit(Task::Exit(9)).await?.await;
    check(
        matches!(&lost, Err(TaskError::MemberLost { member, reason }) if member == "m" && reason.contains("9")),
        || format!("{lost:?}"),
    )?;
    // The member replaces the worker and goes on.
    let outputs = pool.outputs();
    pool.submit(Task::Double(4)).await?.await?;
    let d = outputs.recv().await.ok_or("outputs ended")?;
    check(doubled(&d) == Some(8), || format!("{:?}", d.value()))?;
    drop(d);
    stop_all(&pool, members).await
}

pub(super) async fn bad_tasks() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = start(&url, "bad").await?;
    match pool.submit(Task::Double(1)).await {
        Err(SubmitError::Unroutable(_, Refusal::NoMembers)) => {}
        other => return Err(format!("a task with no member: {other:?}").into()),
    }
    let spec = Spec::new(&url, "bad");
    let members = vec![spec.spawn("m")];
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    match pool
        .submit(Task::Unencodable(looppool_testkit::conformance::Refuse))
        .await
    {
        Err(SubmitError::Encode(_, e)) if !e.is_empty() => {}
        other => return Err(format!("an unencodable task: {other:?}").into()),
    }
    match pool.submit(Task::Blob(vec![7; 2 << 20])).await {
        Err(SubmitError::Encode(Task::Blob(b), e))
            if b.len() == 2 << 20 && e.contains("max_payload") => {}
        other => return Err(format!("a task over the broker's limit: {other:?}").into()),
    }
    // A message on the member's task subject that is not a task: dropped with an error, and
    // the member goes on.
    let js = js(&url).await?;
    js.publish("looppool.bad.task.m", "not postcard".into())
        .await?
        .await?;
    let outputs = pool.outputs();
    pool.submit(Task::Double(21)).await?.await?;
    let d = outputs.recv().await.ok_or("outputs ended")?;
    check(doubled(&d) == Some(42), || format!("{:?}", d.value()))?;
    drop(d);
    stop_all(&pool, members).await
}

pub(super) async fn graceful_stop() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = start(&url, "stop").await?;
    let spec = Spec::new(&url, "stop");
    let members = vec![spec.spawn("a"), spec.spawn("b")];
    pool.wait_for_members(2, Duration::from_secs(30)).await?;
    let outputs = pool.outputs();
    let mut handles = Vec::new();
    for n in 0..8 {
        handles.push(pool.submit(Task::Sleep(50 + n)).await?);
    }
    handles.push(pool.submit(Task::Double(5)).await?);
    let (stopped, refused) = tokio::join!(stop_all(&pool, members), async {
        // Once stop began, nothing new is taken.
        let wait = Deadline::new("the pool to close", Duration::from_secs(10));
        loop {
            match pool.try_submit(Task::Double(1)) {
                Err(SubmitError::Closed(_)) => return Ok::<(), Failed>(()),
                Ok(h) => drop(h),
                Err(_) => {}
            }
            wait.tick().await?;
        }
    });
    refused?;
    stopped?;
    // Accepted tasks ended before stop returned, outputs included.
    for h in handles {
        let r = futures_util::FutureExt::now_or_never(h).ok_or("a task outlived stop")?;
        r?;
    }
    let d = outputs.try_recv().ok_or("the output before stop is gone")?;
    check(doubled(&d) == Some(10), || format!("{:?}", d.value()))?;
    Ok(())
}

pub(super) async fn sigkilled_member() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = quick(Pool::builder(&url, "kill"))
        .ack_wait(Duration::from_secs(1))
        .start()
        .await?;
    let mut events = pool.events();
    let spec = Spec::new(&url, "kill");
    let mut victim = spec.spawn("victim");
    let keeper = spec.spawn("keeper");
    pool.wait_for_members(2, Duration::from_secs(30)).await?;
    let outputs = pool.outputs();
    let mut handles = Vec::new();
    for n in 0..20u64 {
        handles.push(pool.submit(Task::Sleep(100 + n)).await?);
    }
    // Mid-run: a first task ended, and the victim runs one task and holds more.
    let wait = Deadline::new("the victim to hold tasks mid-run", Duration::from_secs(10));
    loop {
        let victim_holds = pool.outstanding("victim").unwrap_or(0);
        let total = victim_holds + pool.outstanding("keeper").unwrap_or(0);
        if victim_holds >= 2 && total < 20 {
            break;
        }
        wait.tick().await?;
    }
    victim.kill();
    let mut moved = 0;
    let mut ended = 0;
    for h in handles.iter_mut() {
        (&mut *h).await?;
        ended += 1;
        if h.attempts() >= 2 {
            check(h.member().as_deref() == Some("keeper"), || {
                "redelivered to the victim".into()
            })?;
            moved += 1;
        }
    }
    check(ended == 20 && moved >= 1, || {
        format!("{ended} ended, {moved} redelivered with a delivery count of 2 or more")
    })?;
    let wait = Deadline::new("the victim's departure", Duration::from_secs(10));
    let left = loop {
        match tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
            Ok(Some(MemberEvent::Left { member, reason })) if member == "victim" => break reason,
            _ => wait.tick().await?,
        }
    };
    check(left.contains("silent"), || format!("left because {left}"))?;
    let mut got = 0;
    while outputs.try_recv().is_some() {
        got += 1;
    }
    check(got == 0, || "Sleep emits nothing".into())?;
    stop_all(&pool, vec![keeper]).await
}

pub(super) async fn member_shutdown() -> Result<(), Failed> {
    let url = shared_url()?;
    // An ack wait far longer than the trial's limit below: handing tasks on must not wait
    // for it.
    let pool = quick(Pool::builder(&url, "shutdown"))
        .ack_wait(Duration::from_secs(600))
        .backlog(6)
        .start()
        .await?;
    let mut events = pool.events();
    let spec = Spec::new(&url, "shutdown");
    let leaving = spec.spawn("leaving");
    let staying = spec.spawn("staying");
    pool.wait_for_members(2, Duration::from_secs(30)).await?;
    let mut handles = Vec::new();
    for _ in 0..12 {
        handles.push(pool.submit(Task::Sleep(100)).await?);
    }
    let wait = Deadline::new(
        "the leaving member to hold 6 tasks",
        Duration::from_secs(10),
    );
    while pool.outstanding("leaving") != Some(6) {
        wait.tick().await?;
    }
    let pid = nix::unistd::Pid::from_raw(leaving.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let all = async {
        for h in handles.iter_mut() {
            (&mut *h).await?;
        }
        Ok::<(), TaskError<ProbeError>>(())
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .map_err(|_| "tasks waited for the ack wait")??;
    let on_staying = handles
        .iter()
        .filter(|h| h.member().as_deref() == Some("staying"))
        .count();
    check(on_staying > 6, || {
        format!("{on_staying} tasks ran on the staying member")
    })?;
    let (code, text) = leaving.exit(Duration::from_secs(10)).await?;
    check(code == 0 && text.contains("shut down"), || {
        format!("the leaving member exited {code}: {text}")
    })?;
    let wait = Deadline::new("the departure", Duration::from_secs(10));
    loop {
        match tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
            Ok(Some(MemberEvent::Left { member, reason })) if member == "leaving" => {
                check(reason.starts_with("shut down"), || {
                    format!("left because {reason}")
                })?;
                break;
            }
            _ => wait.tick().await?,
        }
    }
    stop_all(&pool, vec![staying]).await
}

pub(super) async fn oversized_output() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = start(&url, "oversized").await?;
    let spec = Spec::new(&url, "oversized");
    let members = vec![spec.spawn("m")];
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let outputs = pool.outputs();
    // The server's default max_payload is 1 MiB.
    let big = pool.submit(Task::Zeros(2 << 20)).await?.await;
    check(
        matches!(&big, Err(TaskError::Codec { message }) if message.contains("could not be delivered")),
        || format!("{big:?}"),
    )?;
    // A task that fails with an error too long for the broker ends, saying so with a text cut
    // short on the way (by the worker's pool, as in a local pool, or the member), and the
    // member goes on.
    let long = tokio::time::timeout(
        Duration::from_secs(10),
        pool.submit(Task::FailLong(2 << 20)).await?,
    )
    .await
    .map_err(|_| "a task that failed with a 2 MiB message: unresolved after 10 s")?;
    check(
        matches!(&long, Err(TaskError::Codec { message }) if message.len() < 1 << 20),
        || format!("{:?}", long.map_err(|e| e.to_string().len())),
    )?;
    pool.submit(Task::Zeros(1000)).await?.await?;
    let d = outputs.recv().await.ok_or("outputs ended")?;
    check(
        matches!(d.value(), Out::Bytes(b) if b.len() == 1000),
        || "the next output".into(),
    )?;
    drop(d);
    stop_all(&pool, members).await
}

pub(super) async fn silent_parent() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = quick(Pool::builder(&url, "orphans"))
        .result_credit(1)
        .start()
        .await?;
    // It waits 2 s for a parent to take it in again.
    let spec = Spec {
        wait_for_parent: Some(Duration::from_secs(2)),
        ..Spec::new(&url, "orphans")
    };
    let member = spec.spawn("m");
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    // The member holds outputs nobody reads when its parent goes away, and runs a long task:
    // it stops its workers and leaves all the same.
    let handle = pool.submit(Task::Emit(5)).await?;
    let long = pool.submit(Task::Sleep(60_000)).await?;
    let outputs = pool.outputs();
    let wait = Deadline::new("an output received", Duration::from_secs(10));
    while outputs.len() != 1 {
        wait.tick().await?;
    }
    drop((handle, long));
    drop(pool);
    let (code, text) = member.exit(Duration::from_secs(10)).await?;
    check(
        code == 3 && text.contains("silent") && text.contains("did not answer for 2s"),
        || format!("exited {code}: {text}"),
    )
}

pub(super) async fn duplicate_name() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = start(&url, "dup").await?;
    let spec = Spec::new(&url, "dup");
    let mut first = spec.spawn("same");
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let first_pid = pool.members()[0].pid;
    // A second process of that name is kept out while the first lives, with a retryable
    // refusal (it gives up after 2 s here).
    let second = Spec {
        wait_for_parent: Some(Duration::from_secs(2)),
        ..spec.clone()
    }
    .spawn("same");
    let (code, text) = second.exit(Duration::from_secs(20)).await?;
    check(
        code == 3 && text.contains("same is in use by a live run"),
        || format!("the second member exited {code}: {text}"),
    )?;
    check(pool.members().len() == 1, || "two members".into())?;
    // The first dies and is restarted: the new process takes its place once the old one
    // missed two heartbeats, well before the member timeout.
    first.kill();
    let killed = Instant::now();
    let restarted = spec.spawn("same");
    let wait = Deadline::new("the restarted member", Duration::from_secs(10));
    while pool.members().first().is_none_or(|m| m.pid == first_pid) {
        wait.tick().await?;
    }
    // Well before the old run's tasks would be taken back, had it held any.
    check(killed.elapsed() < Duration::from_secs(5), || {
        format!("taken in {:?} after the kill", killed.elapsed())
    })?;
    pool.submit_to("same", Task::Double(1)).await?.await?;
    stop_all(&pool, vec![restarted]).await
}

pub(super) async fn other_runtimes() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = start(&url, "runtimes").await?;
    let smol = Spec {
        runtime: "smol",
        ..Spec::new(&url, "runtimes")
    }
    .spawn("smol");
    let async_std = Spec {
        runtime: "async-std",
        ..Spec::new(&url, "runtimes")
    }
    .spawn("async-std");
    pool.wait_for_members(2, Duration::from_secs(30)).await?;
    let outputs = pool.outputs();
    for member in ["smol", "async-std"] {
        pool.submit_to(member, Task::Double(3)).await?.await?;
        pool.submit_to(member, Task::Sleep(5)).await?.await?;
        let d = outputs.recv().await.ok_or("outputs ended")?;
        check(d.member() == Some(member) && doubled(&d) == Some(6), || {
            format!("{member}: {:?}", d.value())
        })?;
    }
    stop_all(&pool, vec![smol, async_std]).await
}
