//! Trials of the broker: one that requires credentials, restarts, or goes for good.

use super::*;

pub(super) async fn credentials() -> Result<(), Failed> {
    let server = NatsServer::start_with(&["--user", "looppool", "--pass", "s3cret"])?;
    let url = server.url();
    match Pool::<Probe>::builder(&url, "auth").start().await {
        Err(looppool_nats::Error::Connect { server, message }) => {
            check(server == url && !message.is_empty(), || message.clone())?;
        }
        other => return Err(format!("no credentials: {other:?}").into()),
    }
    let options = looppool_nats::async_nats::ConnectOptions::with_user_and_password(
        "looppool".into(),
        "s3cret".into(),
    );
    let pool = quick(Pool::builder(&url, "auth"))
        .connect_options(options)
        .start()
        .await?;
    let spec = Spec {
        credentials: Some(("looppool", "s3cret")),
        ..Spec::new(&url, "auth")
    };
    let members = vec![spec.spawn("m")];
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let outputs = pool.outputs();
    pool.submit(Task::Double(2)).await?.await?;
    let d = outputs.recv().await.ok_or("outputs ended")?;
    check(doubled(&d) == Some(4), || format!("{:?}", d.value()))?;
    drop(d);
    stop_all(&pool, members).await
}

pub(super) async fn broker_restart() -> Result<(), Failed> {
    let mut server = NatsServer::start()?;
    let url = server.url();
    let pool = quick(Pool::builder(&url, "restart")).start().await?;
    let spec = Spec::new(&url, "restart");
    let members = vec![spec.spawn("a"), spec.spawn("b")];
    pool.wait_for_members(2, Duration::from_secs(30)).await?;
    let outputs = pool.outputs();
    for n in 0..10 {
        pool.submit(Task::Double(n)).await?.await?;
    }
    // Tasks running across the restart, ending while the broker is away for a second: their
    // ends wait in their members, which send them again once it is back.
    let mut running = Vec::new();
    for _ in 0..4 {
        running.push(pool.submit(Task::Sleep(300)).await?);
    }
    let back = tokio::time::Instant::now() + Duration::from_secs(1);
    server.shut_down();
    // A submission while the broker is away waits for it to come back.
    let (late, relaunched) = tokio::join!(pool.submit(Task::Double(10)), async {
        tokio::time::sleep_until(back).await;
        server.launch()
    });
    relaunched?;
    late?.await?;
    for h in running {
        tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .map_err(|_| "a task that ended while the broker was away: unresolved after 20 s")??;
    }
    let mut values = Vec::new();
    while values.len() < 11 {
        let d = outputs.recv().await.ok_or("outputs ended")?;
        values.push(doubled(&d).ok_or("not Doubled")?);
    }
    values.sort_unstable();
    check(values == (0..11).map(|n| n * 2).collect::<Vec<_>>(), || {
        format!("outputs {values:?}")
    })?;
    check(pool.members().len() == 2, || {
        format!("members after the restart: {:?}", pool.members())
    })?;
    let stopped = pool.stop().await;
    check(stopped.left.len() == 2, || format!("{stopped:?}"))?;
    let mut resent = 0;
    for m in members {
        let (code, text) = m.exit(Duration::from_secs(10)).await?;
        check(code == 0, || format!("a member exited {code}: {text}"))?;
        resent += resent_count(&text).ok_or_else(|| format!("no count in {text:?}"))?;
    }
    // The ends made while the broker was away were sent again.
    check(resent >= 4, || format!("{resent} messages resent"))
}

/// The number of messages a member says it sent again.
fn resent_count(text: &str) -> Option<u64> {
    let (before, _) = text.split_once(" messages resent")?;
    before.rsplit('(').next()?.trim().parse().ok()
}

pub(super) async fn broker_gone() -> Result<(), Failed> {
    let mut server = NatsServer::start()?;
    let url = server.url();
    let pool = quick(Pool::builder(&url, "gone"))
        .broker_timeout(Duration::from_secs(1))
        .backlog(1)
        .stop_timeout(Duration::from_secs(2))
        .start()
        .await?;
    let spec = Spec::new(&url, "gone");
    let mut member = spec.spawn("m");
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    // The member's backlog is full: the next submission waits for room.
    let running = pool.submit(Task::Sleep(60_000)).await?;
    server.shut_down();
    let started = Instant::now();
    // The member is told to shut down while the broker is away.
    member.terminate();
    let (waiting, ran) = tokio::time::timeout(Duration::from_secs(15), async {
        tokio::join!(pool.submit(Task::Double(1)), running)
    })
    .await
    .map_err(|_| "a waiting submission or a handle unresolved 15 s after the broker went")?;
    match waiting {
        Err(SubmitError::Broker(Task::Double(1), e)) => check(e.contains("unreachable"), || e)?,
        other => return Err(format!("the waiting submission: {other:?}").into()),
    }
    match ran {
        Err(e) if e.is_broker() => {}
        other => return Err(format!("the running task: {other:?}").into()),
    }
    match pool.submit(Task::Double(2)).await {
        Err(SubmitError::Broker(Task::Double(2), _)) => {}
        other => return Err(format!("a task with the broker gone: {other:?}").into()),
    }
    check(started.elapsed() < Duration::from_secs(10), || {
        format!("reported after {:?}", started.elapsed())
    })?;
    tokio::time::timeout(Duration::from_secs(15), pool.stop())
        .await
        .map_err(|_| "stop() still waiting 15 s after the broker went")?;
    let (code, text) = member.exit(Duration::from_secs(15)).await?;
    check(code == 0, || format!("the member exited {code}: {text}"))
}

pub(super) async fn bounded_streams() -> Result<(), Failed> {
    use looppool_nats::async_nats::jetstream::stream::StorageType;
    let url = shared_url()?;
    let pool = quick(Pool::builder(&url, "bounded"))
        .stream_bytes(200_000)
        .storage(StorageType::Memory)
        .backlog(100)
        .start()
        .await?;
    // One task at a time: the rest wait in the task stream.
    let member = Spec {
        capacity: 1,
        ..Spec::new(&url, "bounded")
    }
    .spawn("m");
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let js = js(&url).await?;
    for kind in ["tasks", "dead"] {
        let name = format!("looppool-bounded-{kind}");
        let config = js.get_stream(&name).await?.info().await?.config.clone();
        check(
            config.max_bytes == 200_000
                && config.max_message_size > 0
                && config.storage == StorageType::Memory,
            || format!("stream {name}: {config:?}"),
        )?;
    }
    // Consumers go when nobody reads them (a dead parent's or member's).
    let tasks = js.get_stream("looppool-bounded-tasks").await?;
    let expiry = tasks.consumer_info("m").await?.config.inactive_threshold;
    check(expiry >= Duration::from_secs(60), || {
        format!("the member's consumer expires after {expiry:?}")
    })?;

    // The task stream fills: the next submission is refused at once, saying so. The member
    // holds one task until a gate opens; the rest wait in the stream.
    let gate = std::env::temp_dir().join(format!("looppool-bounded-gate-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    let held = Task::EmitAcross {
        first: 0,
        file: gate.display().to_string(),
        then: 0,
    };
    let hold = pool.submit(held).await?;
    let blob = Task::Blob(vec![7; 40_000]);
    let mut accepted = Vec::new();
    let started = Instant::now();
    let refusal = loop {
        match pool.submit(blob.clone()).await {
            Ok(h) => accepted.push(h),
            Err(SubmitError::Broker(_, why)) => break why,
            Err(e) => return Err(format!("a blob: {e}").into()),
        }
        check(accepted.len() <= 10, || {
            "the task stream never filled".into()
        })?;
    };
    check(refusal.contains("full"), || refusal.clone())?;
    check(started.elapsed() < Duration::from_secs(5), || {
        format!("refused after {:?}", started.elapsed())
    })?;
    check((3..=5).contains(&accepted.len()), || {
        format!("{} blobs of 40 kB taken in 200 kB", accepted.len())
    })?;
    // `try_submit` returns before the task is stored: the broker's refusal ends the task.
    let unstored = pool.try_submit(blob.clone())?;
    match tokio::time::timeout(Duration::from_secs(5), unstored).await {
        Ok(Err(TaskError::Broker { reason })) if reason.contains("full") => {}
        other => return Err(format!("a task the full stream refused: {other:?}").into()),
    }
    // Nothing that waited was dropped, and the pool takes tasks again.
    std::fs::write(&gate, b"go")?;
    hold.await?;
    let _ = std::fs::remove_file(&gate);
    for h in accepted {
        h.await?;
    }
    pool.submit(blob).await?.await?;
    stop_all(&pool, vec![member]).await
}

pub(super) async fn store_lost() -> Result<(), Failed> {
    let mut server = NatsServer::start()?;
    let url = server.url();
    let pool = quick(Pool::builder(&url, "amnesia")).start().await?;
    let spec = Spec::new(&url, "amnesia");
    let mut members = vec![spec.spawn("a"), spec.spawn("b")];
    pool.wait_for_members(2, Duration::from_secs(30)).await?;
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(pool.submit(Task::Sleep(3000)).await?);
    }
    // The broker comes back without its store: streams, consumers and lease are gone.
    server.lose_store();
    server.launch()?;
    for h in handles {
        match tokio::time::timeout(Duration::from_secs(20), h).await {
            Ok(Err(TaskError::Broker { reason })) if reason.contains("lost the pool's streams") => {
            }
            other => return Err(format!("a task under way: {other:?}").into()),
        }
    }
    // The streams are made anew and the members join again.
    let wait = Deadline::new("the pool to run tasks again", Duration::from_secs(30));
    loop {
        let last = match pool.submit(Task::Double(1)).await {
            Ok(h) => match h.await {
                Ok(()) => break,
                Err(e) => format!("task: {e}"),
            },
            Err(e) => format!("submit: {e}"),
        };
        if let Err(e) = wait.tick().await {
            let members = pool.members();
            return Err(format!("{:?}; last: {last}; members {members:?}", e.message()).into());
        }
    }
    if let Err(e) = pool.wait_for_members(2, Duration::from_secs(30)).await {
        let states: Vec<String> = members.iter_mut().map(MemberProc::state).collect();
        return Err(format!("{e}; {}", states.join("; ")).into());
    }
    stop_all(&pool, members).await
}
