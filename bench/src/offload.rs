//! Python Looppool's scenario: an HTTP server whose slow requests do CPU-heavy work while fast ones
//! should still be answered at once. Fast-request p99 is measured unloaded, then under a steady
//! load of slow requests whose work runs in a default pool (workers 10 below the server's
//! priority), then in a pool whose workers run at the server's own priority, then with the same
//! work done inline on the server's loop.
//!
//! Then the pool alone, with slow tasks among fast ones submitted to it (`mixed`): the fast
//! tasks' p99 under each routing policy, beside the same stream with no slow tasks. Under
//! least-loaded a fast task goes to a worker that is not busy with a slow one; under
//! round-robin it may wait behind one.

use crate::report::{percentile, Report};
use crate::scenarios::{spin_task, Setup};
use looppool_core::{BoxError, Routing};
use looppool_examples::http::{response, serve, Client};
use serde_bytes::ByteBuf;
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// The CPU work of one slow request.
const SLOW: Duration = Duration::from_millis(20);

/// Slow requests kept in flight per worker.
const SLOW_PER_WORKER: usize = 2;

fn spin(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Runs on the tokio adapter, inside a `LocalSet`.
pub(crate) async fn offload(s: &Setup, requests: usize) -> Result<Vec<Report>, BoxError> {
    if s.runtime != "tokio" {
        return Err("offload runs on tokio only: its HTTP server is hyper on tokio".into());
    }
    let pool = Rc::new((s.builder)().workers(s.workers).start().await?);
    // The same pool with its workers at the server's own CPU priority.
    let as_parent = Rc::new(
        (s.builder)()
            .name("as-parent")
            .workers(s.workers)
            .worker_nice_as_parent()
            .start()
            .await?,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let pools = (pool.clone(), as_parent.clone());
    let server = tokio::task::spawn_local(serve(listener, move |request| {
        let (pool, as_parent) = pools.clone();
        async move {
            let path = request.uri().path();
            match path {
                "/slow" | "/slow-as-parent" => {
                    let pool = if path == "/slow" { pool } else { as_parent };
                    match pool.call(spin_task(SLOW)).await {
                        Ok(_) => response("slow", &[]),
                        Err(e) => response(e.to_string(), &[]),
                    }
                }
                "/slow-inline" => {
                    spin(SLOW);
                    response("slow", &[])
                }
                _ => response("fast", &[]),
            }
        }
    }));

    // The load comes from a thread of its own, so that the server's loop is all it measures.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let slow_load = s.workers * SLOW_PER_WORKER;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a client runtime");
        let local = tokio::task::LocalSet::new();
        let phases = local.block_on(&rt, async {
            let unloaded = fast_p99(&base, requests, None).await?;
            let pooled = fast_p99(&base, requests, Some(("/slow", slow_load))).await?;
            let equal = fast_p99(&base, requests, Some(("/slow-as-parent", slow_load))).await?;
            let inline = fast_p99(&base, requests / 20, Some(("/slow-inline", slow_load))).await?;
            Ok::<_, String>((unloaded, pooled, equal, inline))
        });
        let _ = tx.send(phases);
    });
    let phases = rx.await.map_err(|_| "the client thread died")?;
    server.abort();
    pool.stop().await;
    as_parent.stop().await;
    let (unloaded, pooled, equal, inline) = phases?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(vec![
        s.report("offload", "fast p99")
            .value(us(pooled), "us")
            .floor(us(unloaded)),
        s.report("offload", "fast p99 as parent")
            .value(us(equal), "us")
            .floor(us(unloaded)),
        s.report("offload", "inline p99")
            .value(us(inline), "us")
            .floor(us(unloaded)),
    ])
}

/// One task in `MIXED_SLOW_EVERY` is slow in the mixed stream: with one task a millisecond, the
/// slow ones keep one worker's worth of CPU busy, and a fast task arrives every millisecond.
const MIXED_SLOW_EVERY: usize = 20;

/// Fast tasks' p99 with slow tasks among them, under least-loaded and round-robin routing;
/// each beside the same stream without slow tasks.
pub(crate) async fn mixed(s: &Setup, tasks: usize) -> Result<Vec<Report>, BoxError> {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let alone = mixed_fast_p99(s, Routing::LeastLoaded, tasks, None).await?;
    let mut reports = Vec::new();
    for (routing, metric) in [
        (Routing::LeastLoaded, "mixed p99 least-loaded"),
        (Routing::RoundRobin, "mixed p99 round-robin"),
    ] {
        let p99 = mixed_fast_p99(s, routing, tasks, Some(MIXED_SLOW_EVERY)).await?;
        reports.push(
            s.report("offload", metric)
                .value(us(p99), "us")
                .floor(us(alone)),
        );
    }
    Ok(reports)
}

/// Submits `tasks` tasks to a fresh pool, one a millisecond, each `slow_every`-th a slow one;
/// the p99 of the fast ones' call latency.
async fn mixed_fast_p99(
    s: &Setup,
    routing: Routing,
    tasks: usize,
    slow_every: Option<usize>,
) -> Result<Duration, BoxError> {
    let pool = (s.builder)()
        .name("mixed")
        .workers(s.workers)
        .routing(routing)
        .start()
        .await?;
    let mut calls = Vec::with_capacity(tasks);
    for i in 0..tasks {
        let slow = slow_every.is_some_and(|every| i % every == 0);
        let task = match slow {
            true => spin_task(SLOW),
            false => ByteBuf::from(vec![0u8; 16]),
        };
        let pool = pool.clone();
        calls.push(tokio::task::spawn_local(async move {
            let t = Instant::now();
            let answered = pool.call(task).await.map_err(|e| e.to_string());
            answered.map(|_| (slow, t.elapsed()))
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut fast = Vec::with_capacity(tasks);
    for call in calls {
        let (slow, took) = call.await.map_err(|e| e.to_string())??;
        if !slow {
            fast.push(took);
        }
    }
    pool.stop().await;
    Ok(percentile(&mut fast, 0.99))
}

/// The p99 of `n` sequential fast requests, while `load` (a path and a number of clients)
/// keeps slow requests going.
async fn fast_p99(base: &str, n: usize, load: Option<(&str, usize)>) -> Result<Duration, String> {
    let stop = Rc::new(Cell::new(false));
    let mut loaders = Vec::new();
    if let Some((path, clients)) = load {
        for _ in 0..clients {
            let (stop, url) = (stop.clone(), format!("{base}{path}"));
            loaders.push(tokio::task::spawn_local(async move {
                let client = Client::new();
                while !stop.get() {
                    client.get(&url).await.map_err(|e| e.to_string())?;
                }
                Ok::<_, String>(())
            }));
        }
        // Let the slow requests reach the server before measuring.
        tokio::time::sleep(SLOW * 2).await;
    }
    let client = Client::new();
    let url = format!("{base}/fast");
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        client.get(&url).await.map_err(|e| e.to_string())?;
        times.push(t.elapsed());
        // Fast requests come at intervals, as users' do, not back to back.
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    stop.set(true);
    for loader in loaders {
        loader.await.map_err(|e| e.to_string())??;
    }
    Ok(percentile(&mut times, 0.99))
}
