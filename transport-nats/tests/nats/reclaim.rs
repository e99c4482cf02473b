//! Trials of taking back a dead member's tasks: a task that kills every member it reaches is
//! given up on, tasks a dead member never received move at once, within backlogs, and tasks
//! with no member to take them wait one member timeout, or end at once when the pool stops.

use super::{check, js, quick, shared_url, stop_all, Deadline, Failed, MemberProc, Spec};
use futures_util::FutureExt;
use looppool_nats::{async_nats, Pool, TaskError};
use looppool_testkit::conformance::Task;
use std::time::{Duration, Instant};

pub(super) async fn poison_task() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = quick(Pool::builder(&url, "poison"))
        .ack_wait(Duration::from_secs(1))
        .max_deliveries(2)
        .start()
        .await?;
    // Workers as threads: the task's exit takes its member down.
    let spec = Spec {
        start: "thread",
        ..Spec::new(&url, "poison")
    };
    let mut members: Vec<MemberProc> = ["p1", "p2", "p3"].iter().map(|n| spec.spawn(n)).collect();
    pool.wait_for_members(3, Duration::from_secs(30)).await?;
    let mut poison = pool.submit(Task::Exit(9)).await?;
    match (&mut poison).await {
        Err(TaskError::MemberLost { reason, .. }) if reason.contains("delivered 2 times") => {}
        other => return Err(format!("the poison task: {other:?}").into()),
    }
    check(poison.attempts() == 2, || {
        format!("{} deliveries", poison.attempts())
    })?;
    // Two members died of it; the third never had it.
    let mut dead = 0;
    let mut alive = Vec::new();
    for m in members.drain(..) {
        let name = m.name.clone();
        match pool.outstanding(&name) {
            Some(_) => alive.push(m),
            None => {
                let (code, _) = m.exit(Duration::from_secs(10)).await?;
                check(code == 9, || format!("{name} exited {code}"))?;
                dead += 1;
            }
        }
    }
    check(dead == 2 && alive.len() == 1, || {
        format!("{dead} members died, {} live", alive.len())
    })?;
    let letters = pool.dead_letters().await?;
    check(letters.len() == 1, || format!("dead letters: {letters:?}"))?;
    let letter = &letters[0];
    check(
        letter.id == poison.id() && letter.task == Task::Exit(9) && letter.deliveries == 2,
        || format!("the dead letter: {letter:?}"),
    )?;
    check(pool.dead_letters().await?.is_empty(), || {
        "a dead letter was returned twice".into()
    })?;
    // The pool goes on.
    pool.submit(Task::Double(1)).await?.await?;
    stop_all(&pool, alive).await
}

pub(super) async fn undelivered_move_at_once() -> Result<(), Failed> {
    let url = shared_url()?;
    let ack_wait = Duration::from_secs(6);
    let pool = quick(Pool::builder(&url, "reclaim"))
        .ack_wait(ack_wait)
        .backlog(4)
        .max_deliveries(1)
        .start()
        .await?;
    // The victim's consumer holds 2 unacknowledged tasks: of the 4 it is sent, the first 2
    // reach it and the last 2 wait in the stream.
    let victim_spec = Spec {
        capacity: 2,
        ..Spec::new(&url, "reclaim")
    };
    let mut victim = victim_spec.spawn("victim");
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let mut received = Vec::new();
    for _ in 0..2 {
        received.push(pool.submit(Task::Sleep(60_000)).await?);
    }
    let mut waiting = Vec::new();
    for _ in 0..2 {
        waiting.push(pool.submit(Task::Sleep(300)).await?);
    }
    let keeper = Spec {
        workers: 4,
        ..Spec::new(&url, "reclaim")
    }
    .spawn("keeper");
    pool.wait_for_members(2, Duration::from_secs(30)).await?;
    // The keeper is busy with 3 of its backlog of 4.
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(pool.submit_to("keeper", Task::Sleep(4000)).await?);
    }
    victim.kill();
    let killed = Instant::now();
    // Until the waiting tasks ended, the keeper never holds more than its backlog.
    let wait = Deadline::new("the waiting tasks to end", Duration::from_secs(30));
    let mut most = 0;
    let mut first_move = None;
    let mut running: Vec<_> = waiting.into_iter().map(Some).collect();
    while running.iter().any(Option::is_some) {
        most = most.max(pool.outstanding("keeper").unwrap_or(0));
        let on_keeper = running
            .iter()
            .flatten()
            .any(|h| h.member().as_deref() == Some("keeper"));
        if first_move.is_none() && on_keeper {
            first_move = Some(killed.elapsed());
        }
        for slot in running.iter_mut() {
            if let Some(result) = slot.as_mut().and_then(|h| h.now_or_never()) {
                result?;
                *slot = None;
            }
        }
        if running.iter().any(Option::is_some) {
            wait.tick().await?;
        }
    }
    check(most <= 4, || {
        format!("the keeper held {most} tasks, past its backlog of 4")
    })?;
    // At once: a member timeout after the kill, not an ack wait.
    let first_move = first_move.ok_or("no waiting task moved to the keeper")?;
    check(first_move < Duration::from_millis(3500), || {
        format!("the first waiting task moved {first_move:?} after the kill")
    })?;
    // The tasks the victim had received come back after the ack wait; with one delivery
    // allowed they are not sent again.
    for h in received {
        match h.await {
            Err(TaskError::MemberLost { reason, .. }) if reason.contains("delivered once") => {}
            other => return Err(format!("a task the victim had: {other:?}").into()),
        }
    }
    for h in busy {
        h.await?;
    }
    stop_all(&pool, vec![keeper]).await
}

/// A member shutting down hands back, unstarted, the tasks delivered to it but not yet taken:
/// those deliveries do not count toward the most a task gets. Played by this trial as a member
/// holding the pool's secret, so that the handing back happens on cue.
pub(super) async fn handed_back() -> Result<(), Failed> {
    use super::forge::{seal, wire, VERSION};
    use futures_util::StreamExt;
    use looppool_core::Worker;
    use looppool_nats::async_nats::jetstream::{consumer::PullConsumer, AckKind};
    use looppool_testkit::conformance::Probe;

    let url = shared_url()?;
    // One delivery at most: a delivery counted for the handing back would dead-letter the
    // task. A long member timeout: the played member sends no heartbeat.
    let pool = quick(Pool::builder(&url, "handback"))
        .max_deliveries(1)
        .member_timeout(Duration::from_secs(20))
        .start()
        .await?;
    let real = Spec::new(&url, "handback").spawn("real");
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let client = looppool_nats::async_nats::connect(url.as_str()).await?;
    let nonce = 7;
    let join = wire::Join {
        version: VERSION,
        worker: Probe::name().into(),
        member: "played".into(),
        host: "here".into(),
        pid: std::process::id(),
        capacity: 4,
        workers: 1,
        nonce,
        replaces: None,
    };
    let subject = "looppool.handback.join.played";
    client.request(subject, seal(subject, &join).into()).await?;
    pool.wait_for_members(2, Duration::from_secs(10)).await?;
    // Round-robin over two members: of two tasks, one goes to each.
    let first = pool.submit(Task::Double(1)).await?;
    let second = pool.submit(Task::Double(2)).await?;
    let (mut returned, other) = if first.member().as_deref() == Some("played") {
        (first, second)
    } else {
        (second, first)
    };
    check(returned.member().as_deref() == Some("played"), || {
        format!("no task went to the played member: {:?}", returned.member())
    })?;
    let js = async_nats::jetstream::new(client.clone());
    let consumer: PullConsumer = js
        .get_consumer_from_stream("played", "looppool-handback-tasks")
        .await?;
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await?;
    let message = batch.next().await.ok_or("the task was not delivered")??;
    message.ack_with(AckKind::Nak(None)).await?;
    let leave = wire::Leave {
        nonce,
        reason: "shut down".into(),
        returned: vec![returned.id()],
    };
    let subject = "looppool.handback.leave.played";
    client
        .publish(subject, seal(subject, &leave).into())
        .await?;
    client.flush().await?;
    other.await?;
    let end = tokio::time::timeout(Duration::from_secs(20), &mut returned)
        .await
        .map_err(|_| "the task handed back did not end within 20 s")?;
    check(end.is_ok(), || format!("the task handed back: {end:?}"))?;
    check(
        returned.member().as_deref() == Some("real") && returned.attempts() == 1,
        || {
            format!(
                "it ended on {:?} after {} deliveries",
                returned.member(),
                returned.attempts()
            )
        },
    )?;
    stop_all(&pool, vec![real]).await
}

/// A pool whose only member died is stopped while the member's tasks wait for a member to
/// take them: they end at once as lost, saying the pool stopped, and `stop` does not wait a
/// member timeout for each.
pub(super) async fn stop_ends_waiting_tasks() -> Result<(), Failed> {
    let url = shared_url()?;
    let member_timeout = Duration::from_secs(4);
    let pool = quick(Pool::builder(&url, "waitstop"))
        .member_timeout(member_timeout)
        .ack_wait(Duration::from_secs(1))
        .start()
        .await?;
    let mut events = pool.events();
    let mut only = Spec {
        capacity: 4,
        ..Spec::new(&url, "waitstop")
    }
    .spawn("only");
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let mut handles = Vec::new();
    for _ in 0..3 {
        handles.push(pool.submit(Task::Sleep(60_000)).await?);
    }
    only.kill();
    let left = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Some(looppool_nats::MemberEvent::Left { member, .. }) if member == "only" => {
                    return Ok(())
                }
                Some(_) => continue,
                None => return Err("the pool's events ended"),
            }
        }
    })
    .await
    .map_err(|_| "the killed member was not counted gone within 30 s")?;
    left?;
    let stopping = Instant::now();
    let stopped = pool.stop().await;
    let took = stopping.elapsed();
    check(stopped.unresponsive.is_empty(), || {
        format!("members did not leave: {:?}", stopped.unresponsive)
    })?;
    for h in handles {
        match h.now_or_never() {
            Some(Err(TaskError::MemberLost { reason, .. }))
                if reason.contains("the pool stopped") => {}
            other => return Err(format!("a task the dead member held: {other:?}").into()),
        }
    }
    // One member timeout for all would be the most; one for each, three.
    check(took < member_timeout * 2, || {
        format!("stop took {took:?} with three tasks waiting for a member")
    })?;
    Ok(())
}

/// Tasks of a pool's only member, killed, wait for a member to join for one member timeout
/// from when the last of them was taken back; with none joining, they are lost, saying why.
/// Two never reached the member and come back as soon as it is counted gone; four ran there
/// and come back only once their ack wait, longer than the member timeout, ran out: the first
/// two wait for those.
pub(super) async fn waiting_tasks_expire() -> Result<(), Failed> {
    let url = shared_url()?;
    let member_timeout = Duration::from_secs(2);
    let ack_wait = Duration::from_secs(6);
    let pool = quick(Pool::builder(&url, "waitexpire"))
        .member_timeout(member_timeout)
        .ack_wait(ack_wait)
        .backlog(6)
        .start()
        .await?;
    let mut only = Spec {
        capacity: 4,
        ..Spec::new(&url, "waitexpire")
    }
    .spawn("only");
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let mut handles = Vec::new();
    for _ in 0..6 {
        handles.push(pool.submit(Task::Sleep(60_000)).await?);
    }
    let js = js(&url).await?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("only", "looppool-waitexpire-tasks")
        .await?;
    let wait = Deadline::new("4 tasks delivered, 2 waiting", Duration::from_secs(10));
    while {
        let info = consumer.info().await?;
        (info.num_ack_pending, info.num_pending) != (4, 2)
    } {
        wait.tick().await?;
    }
    let killed = Instant::now();
    only.kill();
    // The running tasks' progress came every third of the ack wait: they come back about two
    // thirds of it after the kill (a second earlier allows for a late tick), and all six wait
    // one member timeout from then, so they end together. Waits started when each came back
    // would end the first two a member timeout before the others.
    let earliest = killed + ack_wait * 2 / 3 + member_timeout - Duration::from_secs(1);
    let mut times = Vec::new();
    // Each task's end, and when it came.
    let ends = handles.into_iter().map(|h| async move {
        let ended = tokio::time::timeout(Duration::from_secs(30), h).await;
        (ended, Instant::now())
    });
    for (ended, at) in futures_util::future::join_all(ends).await {
        let ended =
            ended.map_err(|_| "a task waiting for a member was not given up on within 30 s")?;
        match ended {
            Err(TaskError::MemberLost { reason, .. })
                if reason.contains("no member joined within the member timeout") => {}
            other => return Err(format!("a task the dead member held: {other:?}").into()),
        }
        let early = earliest.saturating_duration_since(at);
        check(early.is_zero(), || {
            format!("a task given up on {early:?} before the last came back and waited")
        })?;
        times.push(at);
    }
    let first = times.iter().min().ok_or("no task")?;
    let spread = times.iter().max().ok_or("no task")?.duration_since(*first);
    check(spread < member_timeout / 2, || {
        format!("the tasks waiting for a member were given up on {spread:?} apart")
    })?;
    pool.stop().await;
    Ok(())
}
