//! Trials of routing: Looppool's strict rotation, least-loaded (the default) that never queues
//! a task behind a busy worker while another has room, and keys that stay on their worker
//! number through respawns.

use super::*;
use looppool_core::Routing;

pub(super) async fn round_robin_gives_each_of_8_workers_100_of_800_tasks<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 8).routing(Routing::RoundRobin)).await?;
    let outputs = pool.outputs();
    let (handles, seen) = draining(&outputs, async {
        let mut handles = Vec::new();
        for _ in 0..800 {
            handles.push(pool.submit(Task::WhoAmI).await.map_err(|e| e.to_string())?);
        }
        let by_handle = count(handles.iter().map(TaskHandle::worker));
        all_ok(handles).await?;
        Ok::<_, String>(by_handle)
    })
    .await;
    let by_handle = handles?;
    let mut by_output = BTreeMap::new();
    for (worker, _, out) in &seen {
        ensure!(*out == Out::Worker(*worker), "worker {worker} said {out:?}");
        *by_output.entry(*worker).or_insert(0) += 1;
    }
    let expected: BTreeMap<usize, usize> = (0..8).map(|w| (w, 100)).collect();
    ensure!(
        by_handle == expected,
        "tasks sent per worker: {by_handle:?}"
    );
    ensure!(
        by_output == expected,
        "tasks processed per worker: {by_output:?}"
    );
    stop_gracefully(&pool).await
}

pub(super) async fn least_loaded_never_queues_a_short_task_behind_a_busy_worker<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 2)).await?;
    let outputs = pool.outputs();
    let runtime = A::runtime();
    let (quick, _) = draining(&outputs, async {
        // Worker 0 is busy for a minute; its capacity leaves room for another task behind it.
        let long = pool
            .submit_to(0, Task::Sleep(60_000))
            .await
            .map_err(|e| e.to_string())?;
        let mut answered_by = Vec::new();
        for n in 0..6 {
            let call = pool.call(Task::WhoAmI);
            let answer = within(
                &*runtime,
                Duration::from_secs(5),
                &format!("call {n}"),
                call,
            )
            .await?
            .map_err(|e| e.to_string())?;
            answered_by.push(answer);
        }
        drop(long);
        Ok::<_, String>(answered_by)
    })
    .await;
    let quick = quick?;
    ensure!(
        quick.iter().all(|out| *out == Out::Worker(1)),
        "short calls were answered by {quick:?}: some waited behind the busy worker"
    );
    pool.kill();
    pool.stop().await;
    Ok(())
}

pub(super) async fn a_key_stays_on_its_worker_number_through_a_respawn<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 3)).await?;
    let outputs = pool.outputs();
    let (result, _) = draining(&outputs, async {
        let mut homes = BTreeMap::new();
        for key in ["alice", "bob", "carol", "dave"] {
            let handle = pool
                .submit_keyed(key, Task::WhoAmI)
                .await
                .map_err(|e| e.to_string())?;
            homes.insert(key, handle.worker());
            handle.await.map_err(|e| e.to_string())?;
        }
        let home = homes["alice"];
        let before = pool.pid(home);
        kill(&pool, home).await?;
        for key in ["alice", "bob", "carol", "dave"] {
            for _ in 0..3 {
                let handle = pool
                    .submit_keyed(key, Task::WhoAmI)
                    .await
                    .map_err(|e| e.to_string())?;
                ensure!(
                    handle.worker() == homes[key],
                    "key {key} went to worker {} after a respawn, not {}",
                    handle.worker(),
                    homes[key]
                );
                handle.await.map_err(|e| e.to_string())?;
            }
        }
        ensure!(
            m == StartMethod::Thread || pool.pid(home) != before,
            "worker {home} was not replaced"
        );
        Ok::<_, String>(homes)
    })
    .await;
    let homes = result?;
    // Equal keys on one number; the outputs came from the worker each key maps to.
    ensure!(
        homes.values().all(|&w| w < 3),
        "keys mapped outside the pool: {homes:?}"
    );
    stop_gracefully(&pool).await
}
