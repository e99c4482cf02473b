//! Trials of how outputs flow back: result credit, whatever the consumer holds, and outputs
//! flushed while a task holds the worker's loop.

use super::*;

pub(super) async fn result_credit_bounds_unacknowledged_outputs_and_loses_nothing<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let credit = 3;
    let pool = start(pool::<A>(m, 1).result_credit(credit)).await?;
    let outputs = pool.outputs();
    // try_put: the first `credit` go through, the rest are handed back.
    let tried = pool
        .submit(Task::TryEmit {
            n: 5,
            accepted: credit as u32,
        })
        .await
        .map_err(|e| e.to_string())?;
    tried.await.map_err(|e| format!("TryEmit: {e}"))?;
    let mut first = Vec::new();
    for _ in 0..credit {
        first.push(outputs.recv().await.ok_or("the stream ended")?);
    }
    ensure!(
        outputs.try_recv().is_none(),
        "more than {credit} outputs were emitted"
    );
    drop(first);

    // put with a slow consumer: hold `credit` deliveries, acknowledge the oldest only then.
    let emitting = pool
        .submit(Task::Emit(50))
        .await
        .map_err(|e| e.to_string())?;
    let mut held = std::collections::VecDeque::new();
    let mut received = Vec::new();
    while received.len() < 50 {
        let d = outputs.recv().await.ok_or("the stream ended early")?;
        received.push(d.value().clone());
        held.push_back(d);
        if held.len() == credit {
            // No credit is left, so the worker cannot have emitted another output.
            ensure!(
                outputs.try_recv().is_none(),
                "an output beyond the credit arrived"
            );
            held.pop_front();
        }
    }
    drop(held);
    emitting.await.map_err(|e| format!("Emit: {e}"))?;
    ensure!(
        received == (0..50).map(Out::Seq).collect::<Vec<_>>(),
        "received {received:?}"
    );
    stop_gracefully(&pool).await
}

pub(super) async fn a_consumer_holding_outputs_while_it_waits_for_more_is_not_starved<
    A: Adapter,
>(
    m: StartMethod,
) -> Outcome {
    // Credit goes back in batches. Here one output is read early, when the worker still has
    // most of its credit (not worth a frame of its own), and the rest only once the next one
    // arrives: the worker uses up its credit meanwhile and must get the one credit back.
    let credit = 4;
    let pool = start(pool::<A>(m, 1).result_credit(credit)).await?;
    let outputs = pool.outputs();
    let file = std::env::temp_dir().join(format!("looppool-across-{}-{m:?}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let emitting = pool
        .submit(Task::EmitAcross {
            first: 1,
            file: file.to_string_lossy().into_owned(),
            then: credit as u32,
        })
        .await
        .map_err(|e| e.to_string())?;
    let rt = A::runtime();
    let limit = Duration::from_secs(20);
    let first = within(&*rt, limit, "the first output", outputs.recv())
        .await?
        .ok_or("the stream ended")?;
    ensure!(first.value() == &Out::Seq(0), "first {:?}", first.value());
    drop(first);
    std::fs::write(&file, b"").map_err(|e| e.to_string())?;
    // A sliding window of credit - 1 outputs, all held while the next is awaited: the worker
    // has used up its credit by then, and the one read first is its only way on.
    let mut held = Vec::new();
    for i in 1..=credit as u32 {
        let what = format!("output {i}, with {} held", held.len());
        let d = within(&*rt, limit, &what, outputs.recv())
            .await?
            .ok_or("the stream ended")?;
        ensure!(d.value() == &Out::Seq(i), "output {i}: {:?}", d.value());
        held.push(d);
        if held.len() > credit - 1 {
            held.remove(0);
        }
    }
    drop(held);
    let _ = std::fs::remove_file(&file);
    within(&*rt, limit, "the task's end", emitting)
        .await?
        .map_err(|e| format!("EmitAcross: {e}"))?;
    stop_gracefully(&pool).await
}

pub(super) async fn outputs_are_flushed_before_the_next_cpu_bound_task_starts<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    // Room for every task and output below: nothing waits on the parent.
    let pool = start(pool::<A>(m, 1).capacity(32).result_credit(32)).await?;
    let outputs = pool.outputs();
    let marker = std::env::temp_dir().join(format!("looppool-spin-{}-{m:?}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    // Short tasks whose frames the worker would rather send together, then one that holds the
    // worker's loop without yielding, likely all read in one go.
    let mut firsts = Vec::new();
    for n in 0..20 {
        firsts.push(
            pool.submit(Task::Double(n))
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let spinning = pool
        .submit(Task::SpinUntilExists(marker.to_string_lossy().into_owned()))
        .await
        .map_err(|e| e.to_string())?;
    // The spinning task never yields until the marker exists, and the marker is only created
    // once every earlier task's output and end have arrived.
    let arrived = within(
        &*A::runtime(),
        Duration::from_secs(20),
        "the earlier tasks' outputs and ends",
        async {
            let mut received = Vec::new();
            for _ in 0..20 {
                received.push(outputs.recv().await.map(|o| (*o).clone()));
            }
            (received, futures_util::future::join_all(firsts).await)
        },
    )
    .await;
    std::fs::write(&marker, b"").map_err(|e| e.to_string())?;
    let (received, ended) = arrived?;
    let expected: Vec<_> = (0..20).map(|n| Some(Out::Doubled(2 * n))).collect();
    ensure!(received == expected, "outputs {received:?}");
    ensure!(ended.iter().all(|e| *e == Ok(())), "ends {ended:?}");
    spinning.await.map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&marker);
    let _ = std::fs::remove_file(format!("{}.spinning", marker.display()));
    stop_gracefully(&pool).await
}
