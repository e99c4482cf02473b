//! A member with valid credentials and the pool's secret tries to act in another member's
//! name, and the users `Permissions` describes run a pool's whole life.

use super::forge::{self, seal, sniff, wire};
use super::{check, quick, stop_all, Deadline, Failed, Spec};
use futures_util::FutureExt;
use looppool_core::Worker;
use looppool_nats::async_nats::{self, ConnectOptions};
use looppool_nats::{Permissions, Pool};
use looppool_testkit::conformance::{Out, Probe, Task};
use looppool_testkit::nats_server::NatsServer;
use std::time::{Duration, Instant};

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
            worker: 0,
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
            worker: 0,
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
                worker: 0,
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
        use async_nats::jetstream::{context::GetStreamErrorKind, ErrorCode};
        let gone = match js.get_stream(stream).await {
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(e) => e.error_code() == ErrorCode::STREAM_NOT_FOUND,
                _ => false,
            },
            Ok(_) => false,
        };
        check(gone, || {
            format!("stream {stream} is still there, or unread")
        })?;
    }
    Ok(())
}
