//! Trials of who may act on a pool: a client of the same server without the pool's secret
//! forges and replays every kind of message the pool exchanges, and a member with valid
//! credentials tries to end another member's task.

use super::forge::{self, forge, seal, sniff, wire};
use super::{check, quick, shared_url, stop_all, Deadline, Failed, Spec};
use futures_util::{FutureExt, StreamExt};
use looppool_core::Worker;
use looppool_nats::async_nats::{self, ConnectOptions};
use looppool_nats::{MemberEvent, Permissions, Pool};
use looppool_testkit::conformance::{Out, Probe, Task};
use looppool_testkit::nats_server::NatsServer;
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
    let mut long = pool.submit(Task::Sleep(3000)).await?;

    // The forger connects without credentials and learns the runs' numbers from the traffic.
    let rogue = async_nats::connect(&url).await?;
    let js = async_nats::jetstream::new(rogue.clone());
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
            id: long.id(),
            deliveries: 1,
            outputs: 0,
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
            payload: Ok(postcard::to_stdvec(&Out::Doubled(666)).unwrap()),
        }],
    };
    rogue
        .publish(
            "looppool.forged.up.m",
            forge(&output(Some(long.id()))).into(),
        )
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
    let mut tasks = rogue.subscribe("looppool.forged.task.m").await?;
    let mut ups = rogue.subscribe("looppool.forged.up.m").await?;
    rogue.flush().await?;
    pool.submit(Task::Double(4)).await?.await?;
    let d = outputs.recv().await.ok_or("outputs ended")?;
    check(*d.value() == Out::Doubled(8) && d.member() == "m", || {
        format!("the first output is {:?} from {}", d.value(), d.member())
    })?;
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
    // The genuine task, seen on the wire, stored again: the member does not run it twice.
    let seen = tokio::time::timeout(Duration::from_secs(5), tasks.next())
        .await?
        .ok_or("no task seen")?;
    js.publish("looppool.forged.task.m", seen.payload)
        .await?
        .await?;
    check((&mut long).now_or_never().is_none(), || {
        format!(
            "the 3 s task resolved after {:?}: the forged end was taken",
            started.elapsed()
        )
    })?;
    long.await?;
    check(started.elapsed() >= Duration::from_secs(3), || {
        format!("the 3 s task ended after {:?}", started.elapsed())
    })?;
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

pub(super) async fn member_permissions() -> Result<(), Failed> {
    let users = [
        ("parent", "parent-pw", Permissions::parent("perm")),
        ("a", "a-pw", Permissions::member("perm", "a")),
        ("b", "b-pw", Permissions::member("perm", "b")),
    ];
    let config = std::env::temp_dir().join(format!(
        "looppool-nats-permissions-{}.conf",
        std::process::id()
    ));
    std::fs::write(&config, Permissions::server_config(&users))?;
    let server = NatsServer::start_with(&["-c", config.to_str().ok_or("a UTF-8 path")?]);
    std::fs::remove_file(&config)?;
    let server = server?;
    let url = server.url();
    let user = |u: &str, p: &str| ConnectOptions::with_user_and_password(u.into(), p.into());
    let pool = quick(Pool::builder(&url, "perm"))
        .connect_options(user("parent", "parent-pw"))
        .result_credit(4)
        .start()
        .await?;
    let spec = |credentials| Spec {
        workers: 2,
        credentials: Some(credentials),
        ..Spec::new(&url, "perm")
    };
    let members = vec![
        spec(("a", "a-pw")).spawn("a"),
        spec(("b", "b-pw")).spawn("b"),
    ];
    pool.wait_for_members(2, Duration::from_secs(30)).await?;
    let outputs = pool.outputs();
    let b_pid = pool
        .members()
        .into_iter()
        .find(|m| m.name == "b")
        .map(|m| m.pid);
    let started = Instant::now();
    let mut held = pool.submit_to("b", Task::Sleep(3000)).await?;

    // The trial reads the members' runs with the parent's user; member a's user, which holds
    // the pool's secret, tries to end b's task.
    let watcher = user("parent", "parent-pw").connect(&url).await?;
    let (a, _) = sniff::<wire::Alive>(&watcher, "looppool.perm.alive.a").await?;
    let (b, _) = sniff::<wire::Alive>(&watcher, "looppool.perm.alive.b").await?;
    let rogue = user("a", "a-pw")
        .custom_inbox_prefix("_INBOX.perm.a")
        .connect(&url)
        .await?;
    // Member a has sent nothing yet: these are its next messages.
    let end = |nonce, seq| wire::Up {
        nonce,
        seq,
        body: vec![wire::Body::End {
            id: held.id(),
            deliveries: 1,
            outputs: 0,
            outcome: wire::Outcome::Done,
        }],
    };
    // In b's name, well formed and sealed: only the server's permissions stop it.
    let subject = "looppool.perm.up.b";
    rogue
        .publish(subject, seal(subject, &end(b.nonce, 1)).into())
        .await?;
    // In its own name: the parent refuses them, as a does not hold the task.
    let subject = "looppool.perm.up.a";
    rogue
        .publish(subject, seal(subject, &end(a.nonce, 1)).into())
        .await?;
    let output = wire::Up {
        nonce: a.nonce,
        seq: 2,
        body: vec![wire::Body::Output {
            task: Some(held.id()),
            payload: Ok(postcard::to_stdvec(&Out::Doubled(666)).unwrap()),
        }],
    };
    rogue
        .publish(subject, seal(subject, &output).into())
        .await?;
    rogue.flush().await?;

    let wait = Deadline::new("the parent to refuse two messages", Duration::from_secs(10));
    while pool.refused() < 2 {
        wait.tick().await?;
    }
    check((&mut held).now_or_never().is_none(), || {
        format!("b's task resolved after {:?}", started.elapsed())
    })?;
    held.await?;
    check(started.elapsed() >= Duration::from_secs(3), || {
        format!("b's 3 s task ended after {:?}", started.elapsed())
    })?;
    // Nor can it join in b's name: not on b's join subject (the server refuses), not on its
    // own (the parent refuses), not even claiming to be b's next run.
    let join = wire::Join {
        version: forge::VERSION,
        worker: Probe::name().into(),
        member: "b".into(),
        host: "nowhere".into(),
        pid: 1,
        capacity: 8,
        workers: 1,
        nonce: 99,
        replaces: Some(b.nonce),
    };
    let subject = "looppool.perm.join.b";
    let denied = rogue.request(subject, seal(subject, &join).into());
    check(
        tokio::time::timeout(Duration::from_secs(3), denied)
            .await
            .map_or(true, |r| r.is_err()),
        || "a joined on b's subject".into(),
    )?;
    let subject = "looppool.perm.join.a";
    let answer = rogue.request(subject, seal(subject, &join).into()).await?;
    check(answer.payload.len() > 32, || "no answer".into())?;

    let wait = Deadline::new(
        "the parent to refuse three messages",
        Duration::from_secs(10),
    );
    while pool.refused() < 3 {
        wait.tick().await?;
    }
    let b_now = pool
        .members()
        .into_iter()
        .find(|m| m.name == "b")
        .map(|m| m.pid);
    check(b_now == b_pid, || format!("b was replaced: {b_now:?}"))?;
    check(outputs.try_recv().is_none() && pool.refused() == 3, || {
        format!("an output reached the program; {} refused", pool.refused())
    })?;
    // Nor can it flood the parent with outputs past its result credit (4): the parent takes
    // 4 of these 6 and refuses the rest.
    let flood = wire::Up {
        nonce: a.nonce,
        seq: 3,
        body: (0..6)
            .map(|n| wire::Body::Output {
                task: None,
                payload: Ok(postcard::to_stdvec(&Out::Doubled(n)).unwrap()),
            })
            .collect(),
    };
    let subject = "looppool.perm.up.a";
    rogue.publish(subject, seal(subject, &flood).into()).await?;
    rogue.flush().await?;
    let wait = Deadline::new(
        "the parent to refuse five messages",
        Duration::from_secs(10),
    );
    while pool.refused() < 5 {
        wait.tick().await?;
    }
    check(outputs.len() == 4, || {
        format!(
            "{} outputs past the credit of 4 reached the program",
            outputs.len()
        )
    })?;
    while let Some(d) = outputs.try_recv() {
        drop(d);
    }
    // The parent's user suffices for the rest of a pool's life: taking back the tasks of a
    // member that died, reading the dead letters, and removing the pool's streams and lease.
    // Member a dies: its run's numbering is spent by the messages forged above.
    let mut members = members.into_iter();
    let (mut a_proc, b_proc) = (members.next().ok_or("a")?, members.next().ok_or("b")?);
    let first = pool.submit(Task::Sleep(300)).await?;
    let second = pool.submit(Task::Sleep(300)).await?;
    a_proc.kill();
    for handle in [first, second] {
        tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .map_err(|_| "a task of the killed member did not end within 20 s")??;
    }
    let dead = pool.dead_letters().await?;
    check(dead.is_empty(), || format!("{} dead letters", dead.len()))?;
    stop_all(&pool, vec![b_proc]).await?;
    let js = async_nats::jetstream::new(watcher);
    for stream in [
        "looppool-perm-tasks",
        "looppool-perm-dead",
        "KV_looppool-perm",
    ] {
        check(js.get_stream(stream).await.is_err(), || {
            format!("stream {stream} is still there")
        })?;
    }
    Ok(())
}
