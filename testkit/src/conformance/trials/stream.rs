//! Trials of streamed calls (every output of one task, in order, then its end; a slow reader
//! holds the worker back by its credit; a dropped stream cancels its task) and of the pool as a
//! `tower::Service`.

use super::*;
use futures_util::StreamExt;
use looppool_core::CallError;

pub(super) async fn a_streamed_call_yields_every_output_then_the_tasks_end<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    // A credit of 2 for 40 outputs: the task ends only if the stream acknowledges as it yields.
    let pool = start(pool::<A>(m, 2).result_credit(2)).await?;
    let runtime = A::runtime();
    let stream = pool
        .call_stream(Task::Emit(40))
        .await
        .map_err(|e| e.to_string())?;
    let id = stream.id();
    let items = within(
        &*runtime,
        Duration::from_secs(20),
        "the streamed outputs",
        stream.collect::<Vec<_>>(),
    )
    .await?;
    let expected: Vec<_> = (0..40).map(|i| Ok(Out::Seq(i))).collect();
    ensure!(items == expected, "task {id} streamed {items:?}");
    // A failure ends the stream with one error naming the task, after its outputs.
    let failing = pool
        .call_stream(Task::Fail("no more".into()))
        .await
        .map_err(|e| e.to_string())?;
    let failing_id = failing.id();
    let items = within(
        &*runtime,
        Duration::from_secs(20),
        "the failing stream",
        failing.collect::<Vec<_>>(),
    )
    .await?;
    ensure!(
        items
            == vec![Err(CallError::Failed {
                task: failing_id,
                error: ProbeError::Message("no more".into()),
            })],
        "the failing task streamed {items:?}"
    );
    ensure!(
        pool.outputs().try_recv().is_none(),
        "a streamed call's output reached the pool's output stream"
    );
    stop_gracefully(&pool).await
}

pub(super) async fn a_dropped_stream_cancels_its_task_in_the_worker<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let path = temp_path("stream-tick", m);
    let _ = std::fs::remove_file(&path);
    let pool = start(pool::<A>(m, 1).concurrency(1)).await?;
    let runtime = A::runtime();
    let mut stream = pool
        .call_stream(Task::Tick(path.display().to_string()))
        .await
        .map_err(|e| e.to_string())?;
    let watch = super::cancel::ticking::<A>(&path, 3);
    match select(stream.next(), pin!(watch)).await {
        Either::Left((item, _)) => return Err(format!("the ticking stream yielded {item:?}")),
        Either::Right((seen, _)) => seen?,
    }
    drop(stream);
    // One task at a time: this answers only once the ticking one was dropped in the worker.
    let answer = within(
        &*runtime,
        Duration::from_secs(10),
        "a call after the dropped stream",
        pool.call(Task::WhoAmI),
    )
    .await?;
    ensure!(
        matches!(answer, Ok(Out::Worker(0))),
        "the call after the dropped stream: {answer:?}"
    );
    let _ = std::fs::remove_file(&path);
    stop_gracefully(&pool).await
}

pub(super) async fn the_pool_serves_as_a_tower_service<A: Adapter>(m: StartMethod) -> Outcome {
    use tower_service::Service;
    let path = temp_path("service-tick", m);
    let _ = std::fs::remove_file(&path);
    let pool = start(pool::<A>(m, 1).concurrency(1)).await?;
    let runtime = A::runtime();
    // Through the trait: `Pool::call`, the inherent method, would take precedence.
    let mut service = pool.clone();
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(|e| e.to_string())?;
    let answer = within(
        &*runtime,
        Duration::from_secs(10),
        "a request",
        Service::call(&mut service, Task::Double(21)),
    )
    .await?;
    ensure!(
        answer == Ok(Out::Doubled(42)),
        "the service answered {answer:?}"
    );
    // A response future dropped before it resolved (a timeout layer, a client gone) cancels
    // its task in the worker.
    let ticking = Service::call(&mut service, Task::Tick(path.display().to_string()));
    let watch = super::cancel::ticking::<A>(&path, 3);
    match select(ticking, pin!(watch)).await {
        Either::Left((ended, _)) => return Err(format!("the ticking request ended: {ended:?}")),
        Either::Right((seen, _)) => seen?,
    }
    let after = within(
        &*runtime,
        Duration::from_secs(10),
        "a request after the dropped one",
        Service::call(&mut service, Task::WhoAmI),
    )
    .await?;
    ensure!(
        after == Ok(Out::Worker(0)),
        "the request after the dropped one: {after:?}"
    );
    let _ = std::fs::remove_file(&path);
    stop_gracefully(&pool).await
}
