//! Trials of who may act on a pool: a client of the same server without the pool's secret
//! forges and replays every kind of message the pool exchanges (a member with the secret is
//! tried in `permissions`).

use super::forge::{self, forge, sniff, wire};
use super::{check, quick, shared_url, stop_all, Deadline, Failed, Spec};
use futures_util::{FutureExt, StreamExt};
use looppool_core::Worker;
use looppool_nats::async_nats;
use looppool_nats::{MemberEvent, Pool};
use looppool_testkit::conformance::{Out, Probe, Task};
use std::time::{Duration, Instant};

pub(super) async fn forged_messages() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = quick(Pool::builder(&url, "forged")).start().await?;
    // Two workers: one runs the long task, the other what comes meanwhile.
    let spec = Spec {
        workers: 2,
        ..Spec::new(&url, "forged")
    };
    let member = spec.spawn("m");
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let mut events = pool.events();
    let outputs = pool.outputs();
    let started = Instant::now();
    let long = pool.submit(Task::Sleep(3000)).await?;
    let long_id = long.id();
    // The forger connects without credentials and reads the genuine task from the stream
    // while its member runs it.
    let rogue = async_nats::connect(&url).await?;
    let js = async_nats::jetstream::new(rogue.clone());
    let genuine = js
        .get_stream("looppool-forged-tasks")
        .await?
        .get_last_raw_message_by_subject("looppool.forged.task.m")
        .await?
        .payload;
    // When it resolves, noted as it happens: the trial's own steps may take longer than the
    // task on a loaded machine, so "not yet resolved" later would prove nothing.
    let long = tokio::spawn(async move {
        let ended = long.await;
        (ended, started.elapsed())
    });

    // It learns the runs' numbers from the traffic.
    let (alive, alive_sealed) = sniff::<wire::Alive>(&rogue, "looppool.forged.alive.m").await?;
    let (beacon, _) = sniff::<wire::Beacon>(&rogue, "looppool.forged.beacon").await?;
    let (nonce, run) = (alive.nonce, beacon.run);
    let stored = |subject: &'static str, bytes: Vec<u8>| {
        let js = js.clone();
        async move {
            js.publish(subject, bytes.into()).await?.await?;
            Ok::<_, Failed>(())
        }
    };
    // An end of the running task, as if it were done, as the member's next message.
    let end = wire::Up {
        nonce,
        seq: 1,
        body: vec![wire::Body::End {
            id: long_id,
            deliveries: 1,
            outputs: 0,
            worker: 0,
            outcome: wire::Outcome::Done,
        }],
    };
    rogue
        .publish("looppool.forged.up.m", forge(&end).into())
        .await?;
    // Outputs in the member's name and in the name of a member that never joined.
    let output = |task| wire::Up {
        nonce,
        seq: 1,
        body: vec![wire::Body::Output {
            task,
            worker: 0,
            payload: Ok(postcard::to_stdvec(&Out::Doubled(666)).unwrap()),
        }],
    };
    rogue
        .publish("looppool.forged.up.m", forge(&output(Some(long_id))).into())
        .await?;
    rogue
        .publish("looppool.forged.up.ghost", forge(&output(None)).into())
        .await?;
    // A task stored for the member.
    let task = wire::Task {
        run,
        id: 999,
        prior: 0,
        payload: postcard::to_stdvec(&Task::Double(333)).unwrap(),
    };
    stored("looppool.forged.task.m", forge(&task)).await?;
    // A join as a new member.
    let join = wire::Join {
        version: forge::VERSION,
        worker: Probe::name().into(),
        member: "ghost".into(),
        host: "nowhere".into(),
        pid: 1,
        capacity: 8,
        workers: 1,
        nonce: 7,
        replaces: None,
    };
    let answer = rogue
        .request("looppool.forged.join.ghost", forge(&join).into())
        .await?;
    let answer = String::from_utf8_lossy(&answer.payload).into_owned();
    check(
        answer.contains("not sealed with this pool's secret"),
        || format!("the forged join was answered {answer:?}"),
    )?;
    // The member's leave, a stop for the member, and a genuine heartbeat moved to the leave
    // subject.
    let leave = wire::Leave {
        nonce,
        reason: "forged".into(),
        returned: Vec::new(),
    };
    rogue
        .publish("looppool.forged.leave.m", forge(&leave).into())
        .await?;
    let stop = wire::Ctl {
        run,
        nonce,
        control: wire::Control::Stop,
    };
    rogue
        .publish("looppool.forged.ctl.m", forge(&stop).into())
        .await?;
    rogue
        .publish("looppool.forged.leave.m", alive_sealed.clone())
        .await?;
    // And that heartbeat again where it belongs, after the parent had it.
    rogue
        .publish("looppool.forged.alive.m", alive_sealed)
        .await?;
    rogue.flush().await?;

    // The parent refuses seven: the end, two outputs, the join, the leave, the moved heartbeat
    // and the repeated one.
    let wait = Deadline::new(
        "the parent to refuse seven messages",
        Duration::from_secs(10),
    );
    while pool.refused() < 7 {
        wait.tick().await?;
    }
    // The pool still works, and only genuine outputs arrive.
    let mut ups = rogue.subscribe("looppool.forged.up.m").await?;
    rogue.flush().await?;
    pool.submit(Task::Double(4)).await?.await?;
    let d = outputs.recv().await.ok_or("outputs ended")?;
    check(
        *d.value() == Out::Doubled(8) && d.member() == Some("m"),
        || format!("the first output is {:?} from {:?}", d.value(), d.member()),
    )?;
    drop(d);
    // The genuine output and end (one message or two), seen on the wire, sent again: taken
    // once.
    let first = tokio::time::timeout(Duration::from_secs(5), ups.next())
        .await?
        .ok_or("no message of the member seen")?;
    let mut seen = vec![first.payload];
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), ups.next()).await {
        seen.push(m.payload);
    }
    drop(ups);
    for payload in seen {
        rogue.publish("looppool.forged.up.m", payload).await?;
    }
    rogue.flush().await?;
    let (ended, after) = long.await?;
    ended?;
    check(after >= Duration::from_secs(3), || {
        format!("the 3 s task resolved after {after:?}: the forged end was taken")
    })?;
    // The genuine task, ended, stored again: the member does not run it twice, and drops it.
    js.publish("looppool.forged.task.m", genuine).await?.await?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("m", "looppool-forged-tasks")
        .await?;
    let wait = Deadline::new(
        "the member to drop the stored copy",
        Duration::from_secs(10),
    );
    loop {
        let info = consumer.info().await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        wait.tick().await?;
    }
    check(outputs.try_recv().is_none(), || {
        "a forged output reached the program".into()
    })?;
    check(pool.refused() == 7, || {
        format!("the parent refused {} messages, not 7", pool.refused())
    })?;
    let names: Vec<String> = pool.members().into_iter().map(|m| m.name).collect();
    check(names == ["m"], || format!("members: {names:?}"))?;
    while let Some(Some(event)) = events.recv().now_or_never() {
        if let MemberEvent::Left { member, reason } = event {
            return Err(format!("{member} left: {reason}").into());
        }
    }
    let stopped = pool.stop().await;
    check(stopped.unresponsive.is_empty(), || {
        format!("{:?} did not leave", stopped.unresponsive)
    })?;
    // The member refused the forged task, the copy of the genuine one and the forged stop,
    // and ran only the genuine two.
    let (code, text) = member.exit(Duration::from_secs(10)).await?;
    check(
        code == 0
            && text.contains("left after 2 tasks (")
            && text.contains(" messages resent, 3 messages refused)"),
        || format!("the member exited {code}: {text}"),
    )
}

pub(super) async fn no_secret() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = quick(Pool::builder(&url, "nosecret")).start().await?;
    let spec = Spec {
        secret: None,
        ..Spec::new(&url, "nosecret")
    };
    let (code, text) = spec.spawn("m").exit(Duration::from_secs(20)).await?;
    check(
        code == 3 && text.contains("no pool secret") && text.contains("LOOPPOOL_NATS_SECRET"),
        || format!("a member without a secret exited {code}: {text}"),
    )?;
    // With another secret it asks on (an unsealed refusal could come from anyone), saying
    // why, until it gives up (after 2 s here).
    let spec = Spec {
        secret: Some("another secret of the pool"),
        wait_for_parent: Some(Duration::from_secs(2)),
        ..Spec::new(&url, "nosecret")
    };
    let (code, text) = spec.spawn("m").exit(Duration::from_secs(20)).await?;
    check(
        code == 3
            && text.contains("not taken in for 2s")
            && text.contains("not sealed with this pool's secret"),
        || format!("a member with another secret exited {code}: {text}"),
    )?;
    check(pool.members().is_empty() && pool.refused() >= 1, || {
        format!("members {:?}, refused {}", pool.members(), pool.refused())
    })?;
    stop_all(&pool, Vec::new()).await
}
