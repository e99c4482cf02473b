//! Trials of one parent per pool: a second parent is refused while the first lives, and takes
//! the pool over once the first is gone.

use super::{check, doubled, js, quick, shared_url, stop_all, Failed, Spec};
use looppool_nats::{Error, Pool, SubmitError, TaskError};
use looppool_testkit::conformance::{Probe, Task};
use std::time::{Duration, Instant};

pub(super) async fn second_parent() -> Result<(), Failed> {
    let url = shared_url()?;
    let first = quick(Pool::builder(&url, "lease")).start().await?;
    let spec = Spec::new(&url, "lease");
    let member = spec.spawn("m");
    first.wait_for_members(1, Duration::from_secs(30)).await?;
    let outputs = first.outputs();
    let running = first.submit(Task::Sleep(500)).await?;

    // A second parent of the live pool is refused, and touches nothing of it.
    match quick(Pool::<Probe>::builder(&url, "lease")).start().await {
        Err(Error::InUse(why)) => check(why.contains("live parent"), || why.clone())?,
        other => return Err(format!("a second parent of a live pool: {other:?}").into()),
    }
    running.await?;
    first.submit(Task::Double(5)).await?.await?;
    let d = outputs.recv().await.ok_or("outputs ended")?;
    check(doubled(&d) == Some(10), || format!("{:?}", d.value()))?;
    drop(d);
    check(first.members().len() == 1, || "the member was lost".into())?;

    // The first parent dies (its lease is no longer renewed): the pool is taken over once the
    // lease ran out, and never before.
    drop(first);
    let died = Instant::now();
    let lease_time = Duration::from_millis(1500);
    let second = loop {
        match quick(Pool::<Probe>::builder(&url, "lease")).start().await {
            Ok(pool) => break pool,
            Err(Error::InUse(_)) if died.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(format!("taking the pool over: {e}").into()),
        }
    };
    // Its last renewal was at most a heartbeat before it died.
    check(
        died.elapsed() >= lease_time - Duration::from_millis(200),
        || {
            format!(
                "taken over {:?} after the first parent died",
                died.elapsed()
            )
        },
    )?;
    // The first parent's member lost it, and joins the second.
    let members = second.wait_for_members(1, Duration::from_secs(30)).await?;
    check(members[0].name == "m", || format!("members: {members:?}"))?;
    second.submit(Task::Double(6)).await?.await?;
    let d = second.outputs().recv().await.ok_or("outputs ended")?;
    check(doubled(&d) == Some(12), || format!("{:?}", d.value()))?;
    drop(d);
    stop_all(&second, vec![member]).await?;
    // A stopped pool leaves no lease behind: a new parent starts at once.
    let third = quick(Pool::<Probe>::builder(&url, "lease")).start().await?;
    stop_all(&third, Vec::new()).await
}

pub(super) async fn lease_lost() -> Result<(), Failed> {
    let url = shared_url()?;
    let first = quick(Pool::builder(&url, "lost")).start().await?;
    let spec = Spec::new(&url, "lost");
    let member = spec.spawn("m");
    first.wait_for_members(1, Duration::from_secs(30)).await?;
    let running = first.submit(Task::Sleep(5000)).await?;
    // The lease runs out as it would for a parent cut off from the broker past its lease
    // time, and a second parent takes the pool over.
    let js = js(&url).await?;
    js.get_key_value("looppool-lost")
        .await?
        .purge("parent")
        .await?;
    let second = quick(Pool::<Probe>::builder(&url, "lost")).start().await?;
    // The first parent learns it at its next renewal: its tasks end as lost, and it takes
    // no more.
    match tokio::time::timeout(Duration::from_secs(5), running).await {
        Ok(Err(TaskError::MemberLost { reason, .. })) if reason.contains("took the pool over") => {}
        other => return Err(format!("the first parent's task: {other:?}").into()),
    }
    match first.submit(Task::Double(1)).await {
        Err(SubmitError::Broker(_, why)) if why.contains("took the pool over") => {}
        other => return Err(format!("a submission to the first parent: {other:?}").into()),
    }
    // Stopping it leaves the second parent's streams and lease alone.
    first.stop().await;
    js.get_stream("looppool-lost-tasks").await?;
    check(
        js.get_key_value("looppool-lost")
            .await?
            .get("parent")
            .await?
            .is_some(),
        || "the second parent's lease is gone".into(),
    )?;
    // The first parent's member loses it on its silence (the second parent's word is not its
    // parent's), and joins the second.
    let members = second.wait_for_members(1, Duration::from_secs(30)).await?;
    check(members[0].name == "m", || format!("members: {members:?}"))?;
    second.submit(Task::Double(2)).await?.await?;
    stop_all(&second, vec![member]).await
}
