//! Trials of routing and flow control: round-robin, targeted and (sticky) broadcast tasks,
//! and the task and result credits.

use super::{
    check, doubled, js, quick, shared_url, start, stop_all, Deadline, Failed, MemberProc, Spec,
};
use futures_util::future::join_all;
use looppool_nats::{MemberEvent, Pool, Refusal, SubmitError};
use looppool_testkit::conformance::{Out, Task};
use std::time::Duration;

pub(super) async fn round_robin() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = start(&url, "rr").await?;
    let mut events = pool.events();
    let spec = Spec::new(&url, "rr");
    let members: Vec<MemberProc> = ["a", "b", "c"].iter().map(|n| spec.spawn(n)).collect();
    pool.wait_for_members(3, Duration::from_secs(30)).await?;
    let mut joined = Vec::new();
    while joined.len() < 3 {
        if let Some(MemberEvent::Joined(info)) = events.recv().await {
            joined.push(info.name);
        }
    }
    joined.sort();
    check(joined == ["a", "b", "c"], || format!("joined: {joined:?}"))?;

    let outputs = pool.outputs();
    let mut handles = Vec::new();
    for n in 0..30u64 {
        handles.push(pool.submit(Task::Double(n)).await?);
    }
    let mut per_member = std::collections::BTreeMap::new();
    for h in handles.iter_mut() {
        (&mut *h).await?;
        check(h.attempts() == 1, || format!("deliveries {}", h.attempts()))?;
        *per_member
            .entry(h.member().unwrap_or_default())
            .or_insert(0) += 1;
    }
    check(per_member.values().all(|&k| k == 10), || {
        format!("round-robin gave {per_member:?}")
    })?;
    let mut values = Vec::new();
    for _ in 0..30 {
        let d = outputs.recv().await.ok_or("outputs ended")?;
        let id = d.task_id().ok_or("an output without its task")?;
        let h = handles
            .iter()
            .find(|h| h.id() == id)
            .ok_or("unknown task")?;
        check(d.member() == h.member().as_deref(), || {
            "output from another member".into()
        })?;
        values.push(doubled(&d).ok_or("not Doubled")?);
    }
    values.sort_unstable();
    check(values == (0..30).map(|n| n * 2).collect::<Vec<_>>(), || {
        format!("outputs: {values:?}")
    })?;
    stop_all(&pool, members).await
}

pub(super) async fn routing() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = start(&url, "routing").await?;
    let spec = Spec::new(&url, "routing");
    let members = vec![spec.spawn("a"), spec.spawn("b")];
    pool.wait_for_members(2, Duration::from_secs(30)).await?;
    let outputs = pool.outputs();

    // Targeted tasks stay on their member; a broadcast follows what each was sent before.
    pool.submit_to("a", Task::Set(11)).await?.await?;
    let set_b = pool.submit_to("b", Task::Set(22)).await?;
    let handles = pool.broadcast(Task::Get).await?;
    set_b.await?;
    check(handles.len() == 2, || {
        format!("{} broadcast handles", handles.len())
    })?;
    for h in join_all(handles).await {
        h?;
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = outputs.recv().await.ok_or("outputs ended")?;
        if let Out::Value { value, .. } = d.value() {
            seen.push((d.member().unwrap_or_default().to_string(), *value));
        }
    }
    seen.sort();
    check(seen == [("a".into(), 11), ("b".into(), 22)], || {
        format!("broadcast Get saw {seen:?}")
    })?;

    // A sticky broadcast reaches a member that joins later, before its first task.
    for h in pool.broadcast_sticky("config", Task::Set(7)).await? {
        h.await?;
    }
    let late = spec.spawn("late");
    pool.wait_for_members(3, Duration::from_secs(30)).await?;
    pool.submit_to("late", Task::Get).await?.await?;
    let d = outputs.recv().await.ok_or("outputs ended")?;
    check(
        d.member() == Some("late") && matches!(d.value(), Out::Value { value: 7, .. }),
        || format!("the late member saw {:?} from {:?}", d.value(), d.member()),
    )?;
    drop(d);
    match pool.submit_to("nobody", Task::Get).await {
        Err(SubmitError::Unroutable(_, Refusal::UnknownMember)) => {}
        other => return Err(format!("a task for an unknown member: {other:?}").into()),
    }
    let mut members = members;
    members.push(late);
    stop_all(&pool, members).await
}

pub(super) async fn task_credit() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = quick(Pool::builder(&url, "credit"))
        .backlog(6)
        .start()
        .await?;
    let spec = Spec::new(&url, "credit");
    let members = vec![spec.spawn("m")];
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let gate = std::env::temp_dir().join(format!("looppool-nats-gate-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    let gate_s = gate.to_string_lossy().to_string();
    let mut handles = Vec::new();
    for _ in 0..6 {
        handles.push(pool.submit(Task::SpinUntilExists(gate_s.clone())).await?);
    }
    match pool.try_submit(Task::Double(1)) {
        Err(SubmitError::Full(_)) => {}
        other => return Err(format!("a 7th task past a backlog of 6: {other:?}").into()),
    }
    // The member's consumer holds exactly its capacity (1 worker x capacity 2); the rest wait
    // in the stream.
    let js = js(&url).await?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("m", "looppool-credit-tasks")
        .await?;
    let wait = Deadline::new("2 delivered, 4 waiting", Duration::from_secs(10));
    let (ack_pending, pending) = loop {
        let info = consumer.info().await?;
        let got = (info.num_ack_pending, info.num_pending);
        if got == (2, 4) {
            break got;
        }
        wait.tick().await?;
    };
    let max = consumer.cached_info().config.max_ack_pending;
    check(max == 2 && ack_pending == 2 && pending == 4, || {
        format!("max_ack_pending {max}, ack pending {ack_pending}, pending {pending}")
    })?;
    check(pool.outstanding("m") == Some(6), || "outstanding".into())?;
    std::fs::write(&gate, b"go")?;
    for h in handles {
        h.await?;
    }
    std::fs::remove_file(&gate)?;
    stop_all(&pool, members).await
}

pub(super) async fn result_credit() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = quick(Pool::builder(&url, "results"))
        .result_credit(2)
        .start()
        .await?;
    // Two workers: the second runs a task while the first waits for credit.
    let spec = Spec {
        workers: 2,
        ..Spec::new(&url, "results")
    };
    let members = vec![spec.spawn("m")];
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let outputs = pool.outputs();
    let mut handle = pool.submit(Task::Emit(10)).await?;
    // Unread, the member has sent its whole credit and waits.
    let wait = Deadline::new("2 outputs received", Duration::from_secs(10));
    while outputs.len() != 2 {
        wait.tick().await?;
    }
    // Another task's end does not wait behind the outputs held back: a program may wait for
    // it before it reads on.
    let other = pool.submit(Task::Sleep(10)).await?;
    tokio::time::timeout(Duration::from_secs(10), other)
        .await
        .map_err(|_| "another task's end waited behind unread outputs")??;
    let first = outputs.recv().await.ok_or("outputs ended")?;
    check(pool.outstanding("m") == Some(1), || {
        "the task ended early".into()
    })?;
    let mut values = vec![first.into_value()];
    while values.len() < 10 {
        let waiting = outputs.len();
        check(waiting <= 2, || {
            format!("{waiting} outputs received, credit 2")
        })?;
        values.push(outputs.recv().await.ok_or("outputs ended")?.into_value());
    }
    (&mut handle).await?;
    let want: Vec<Out> = (0..10).map(Out::Seq).collect();
    check(values == want, || format!("outputs {values:?}"))?;
    let stopped = pool.stop().await;
    check(stopped.left == ["m"], || format!("{stopped:?}"))?;
    for m in members {
        let (code, text) = m.exit(Duration::from_secs(10)).await?;
        check(code == 0 && text.contains("0 messages refused)"), || {
            format!("member exited {code}: {text}")
        })?;
    }
    Ok(())
}

/// A call's answer is its task's first output, which, like its later ones, never reaches the
/// output stream; its errors are the core's `CallError`, the worker's own error included.
pub(super) async fn calls() -> Result<(), Failed> {
    use looppool_nats::{CallError, Refusal};
    use looppool_testkit::conformance::ProbeError;
    let url = shared_url()?;
    let pool = start(&url, "calls").await?;
    let member = Spec::new(&url, "calls").spawn("m");
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let outputs = pool.outputs();
    let answer = pool.call(Task::Emit(3)).await?;
    check(answer == Out::Seq(0), || format!("the answer: {answer:?}"))?;
    let answer = pool.call_to("m", Task::Double(21)).await?;
    check(answer == Out::Doubled(42), || {
        format!("the answer: {answer:?}")
    })?;
    match pool.call(Task::Sleep(1)).await {
        Err(CallError::NoOutput { .. }) => {}
        other => return Err(format!("a call with no output: {other:?}").into()),
    }
    match pool.call(Task::Refuse(3)).await {
        Err(CallError::Failed {
            error: ProbeError::Refused { code: 3 },
            ..
        }) => {}
        other => return Err(format!("a call that failed: {other:?}").into()),
    }
    match pool.call_to("nobody", Task::Get).await {
        Err(CallError::Unroutable(Refusal::UnknownMember)) => {}
        other => return Err(format!("a call for an unknown member: {other:?}").into()),
    }
    // The member's backlog (its capacity, 2) is full: a try_call is refused at once.
    let busy = [
        pool.submit(Task::Sleep(1000)).await?,
        pool.submit(Task::Sleep(1000)).await?,
    ];
    match pool.try_call(Task::Double(1)).await {
        Err(CallError::Full) => {}
        other => return Err(format!("a try_call with no room: {other:?}").into()),
    }
    for h in busy {
        h.await?;
    }
    // None of the calls' outputs went to the stream: the next there is a submitted task's
    // (read as a `Stream`, as from a local pool, its value through `Deref`).
    pool.submit(Task::Double(5)).await?.await?;
    let mut stream = outputs.clone();
    let d = futures_util::StreamExt::next(&mut stream)
        .await
        .ok_or("outputs ended")?;
    check(*d == Out::Doubled(10) && outputs.is_empty(), || {
        format!("the stream had {:?} and {} more", d.value(), outputs.len())
    })?;
    drop(d);
    // A delivery names its member and that member's worker, and so does its task's handle:
    // over a member of two worker processes, each worker number stands for one process.
    let two = Spec {
        workers: 2,
        ..Spec::new(&url, "calls")
    }
    .spawn("two");
    pool.wait_for_members(2, Duration::from_secs(30)).await?;
    let mut handles = Vec::new();
    for _ in 0..20 {
        handles.push(pool.submit_to("two", Task::Pid).await?);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut by_task = std::collections::HashMap::new();
    for _ in 0..handles.len() {
        let d = outputs.recv().await.ok_or("outputs ended")?;
        let Out::Pid(pid) = *d else {
            return Err(format!("not a pid: {:?}", d.value()).into());
        };
        check(d.member() == Some("two") && d.worker() < 2, || {
            format!("a delivery of {:?}, worker {}", d.member(), d.worker())
        })?;
        seen.insert((d.worker(), pid));
        by_task.insert(d.task_id(), d.worker());
    }
    // The handle, the core's, names the member and its worker that ran the task.
    for mut h in handles {
        (&mut h).await?;
        let emitted = by_task.get(&Some(h.id())).copied();
        check(
            h.member().as_deref() == Some("two") && emitted == Some(h.worker()),
            || {
                format!(
                    "task {} ran on {:?} worker {}; its output came from worker {emitted:?}",
                    h.id(),
                    h.member(),
                    h.worker()
                )
            },
        )?;
    }
    let workers: std::collections::BTreeSet<_> = seen.iter().map(|(w, _)| w).collect();
    let pids: std::collections::BTreeSet<_> = seen.iter().map(|(_, p)| p).collect();
    check(
        workers.len() == seen.len() && pids.len() == seen.len(),
        || format!("worker numbers and processes do not match: {seen:?}"),
    )?;
    stop_all(&pool, vec![member, two]).await
}

/// `try_submit` returns as soon as the task is placed, and the pool stores its tasks in the
/// order they were placed: a member that runs one task at a time answers them in that order.
pub(super) async fn try_submit_in_order() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = quick(Pool::builder(&url, "order"))
        .backlog(64)
        .start()
        .await?;
    let member = Spec {
        capacity: 1,
        ..Spec::new(&url, "order")
    }
    .spawn("m");
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let outputs = pool.outputs();
    let handles = (0..64u64)
        .map(|n| pool.try_submit(Task::Double(n)))
        .collect::<Result<Vec<_>, _>>()?;
    match pool.try_submit(Task::Double(0)) {
        Err(SubmitError::Full(_)) => {}
        other => return Err(format!("a task past a backlog of 64: {other:?}").into()),
    }
    let mut values = Vec::new();
    for _ in 0..64 {
        let d = outputs.recv().await.ok_or("outputs ended")?;
        values.push(doubled(&d).ok_or("not Doubled")?);
    }
    check(values == (0..64).map(|n| n * 2).collect::<Vec<_>>(), || {
        format!("outputs out of order: {values:?}")
    })?;
    for h in handles {
        h.await?;
    }
    stop_all(&pool, vec![member]).await
}
