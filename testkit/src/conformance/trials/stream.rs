//! Trials of streamed calls: every output of one task, in order, then its end; a slow reader
//! holds the worker back by its credit; a dropped stream cancels its task.

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
