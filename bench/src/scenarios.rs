//! The pool scenarios, written once against the runtime-neutral core and run on whichever
//! runtime the command line names.

use crate::cpus;
use crate::floor::{self, Peer};
use crate::report::{percentile, Report};
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use looppool_core::{async_trait, BoxError, Builder, Context, Failure, Pool, Runtime, Worker};
use serde_bytes::ByteBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Echoes each task back as its one output; a task may also ask it to spin first.
pub(crate) struct Echo;

#[async_trait(?Send)]
impl Worker for Echo {
    type Task = ByteBuf;
    type Output = ByteBuf;
    type Error = Failure;

    fn name() -> &'static str {
        "looppool-bench/echo"
    }

    async fn init(_ctx: &Context<ByteBuf>) -> Result<Self, BoxError> {
        Ok(Echo)
    }

    async fn process(&self, task: ByteBuf, ctx: &Context<ByteBuf>) -> Result<(), Failure> {
        // A task that starts with 0xFF carries a number of microseconds to spin first.
        if let [0xFF, a, b, c, d, ..] = task[..] {
            let until =
                Instant::now() + Duration::from_micros(u32::from_le_bytes([a, b, c, d]).into());
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        ctx.put(task).await?;
        Ok(())
    }
}

/// A task that makes an [`Echo`] spin for `d` before echoing it.
pub(crate) fn spin_task(d: Duration) -> ByteBuf {
    let mut task = vec![0xFF];
    task.extend_from_slice(&(d.as_micros() as u32).to_le_bytes());
    ByteBuf::from(task)
}

/// What every scenario is given.
pub(crate) struct Setup {
    pub(crate) rt: Arc<dyn Runtime>,
    pub(crate) builder: fn() -> Builder<Echo>,
    pub(crate) runtime: &'static str,
    pub(crate) workers: usize,
}

impl Setup {
    pub(crate) fn report(&self, scenario: &'static str, metric: &'static str) -> Report {
        Report::new(scenario, metric, self.runtime, self.workers)
    }
}

/// Sends `tasks` tasks with at most `window` in flight (the pool's capacity across workers)
/// while taking every output; returns the time from the first submission to the last output.
async fn pump(pool: &Pool<Echo>, task: &ByteBuf, tasks: usize) -> Result<Duration, BoxError> {
    let outputs = pool.outputs();
    let submit = async {
        for _ in 0..tasks {
            drop(pool.submit(task.clone()).await.map_err(|e| e.to_string())?);
        }
        Ok(())
    };
    timed(submit, tasks, || outputs.recv()).await
}

/// Runs `submit` while taking `tasks` outputs with `next`; the time both took.
pub(crate) async fn timed<T, F: std::future::Future<Output = Option<T>>>(
    submit: impl std::future::Future<Output = Result<(), String>>,
    tasks: usize,
    mut next: impl FnMut() -> F,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let take = async {
        for _ in 0..tasks {
            if next().await.is_none() {
                return Err::<(), BoxError>("the output stream ended".into());
            }
        }
        Ok(())
    };
    let (sent, taken) = futures_util::future::join(submit, take).await;
    sent?;
    taken?;
    Ok(started.elapsed())
}

/// Echo tasks of 16 bytes, 256 in flight: tasks per second.
pub(crate) async fn throughput(s: &Setup, tasks: usize) -> Result<Vec<Report>, BoxError> {
    const WINDOW: usize = 256;
    let pool = (s.builder)()
        .workers(s.workers)
        .capacity(WINDOW.div_ceil(s.workers))
        .result_credit(WINDOW)
        .start()
        .await?;
    let task = ByteBuf::from(vec![7u8; 16]);
    pump(&pool, &task, tasks / 10).await?;
    let took = pump(&pool, &task, tasks).await?;
    pool.stop().await;
    let rate = tasks as f64 / took.as_secs_f64();

    let mut peer = Peer::start()?;
    peer.pipelined(16, tasks / 10, 1);
    let floor = tasks as f64 / peer.pipelined(16, tasks, 1).as_secs_f64();
    // The same frames, 64 to a write: what a writer that coalesces frames could reach.
    let batched = tasks as f64 / peer.pipelined(16, tasks, 64).as_secs_f64();
    Ok(vec![
        s.report("throughput", "rate")
            .value(rate, "tasks/s")
            .floor(floor),
        s.report("throughput", "rate vs batched")
            .value(rate, "tasks/s")
            .floor(batched),
    ])
}

/// One task in flight: round-trip p50 and p99.
///
/// Measured twice, pool and floor alike: with the processes free to use every CPU, then with
/// the parent, its workers and the floor's peer all on CPU 0. Each figure is reported against
/// the lower of the two floors, the best the machine can do.
pub(crate) async fn latency(s: &Setup, trips: usize) -> Result<Vec<Report>, BoxError> {
    let free = pool_trips(s, trips).await?;
    let free_floor = floor_trips(trips)?;
    let every = cpus::current()?;
    cpus::pin_self(&cpus::only(0)?)?;
    // Started now, the workers and the peer inherit CPU 0.
    let pinned = pool_trips(s, trips).await;
    let in_task = pool_trips_in_task(s, trips).await;
    let pinned_floor = floor_trips(trips);
    cpus::pin_self(&every)?;
    let (mut pinned, mut in_task, pinned_floor) = (pinned?, in_task?, pinned_floor?);
    let (mut free, mut free_floor, mut pinned_floor) = (free, free_floor, pinned_floor);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut best =
        |q: f64| us(percentile(&mut free_floor, q).min(percentile(&mut pinned_floor, q)));
    let (floor50, floor99) = (best(0.50), best(0.99));
    Ok(vec![
        s.report("latency", "p50")
            .value(us(percentile(&mut free, 0.50)), "us")
            .floor(floor50),
        s.report("latency", "p50 one CPU")
            .value(us(percentile(&mut pinned, 0.50)), "us")
            .floor(floor50),
        s.report("latency", "p99")
            .value(us(percentile(&mut free, 0.99)), "us")
            .floor(floor99),
        s.report("latency", "p99 one CPU")
            .value(us(percentile(&mut pinned, 0.99)), "us")
            .floor(floor99),
        s.report("latency", "p50 one CPU from a task")
            .value(us(percentile(&mut in_task, 0.50)), "us")
            .floor(floor50),
        s.report("latency", "p99 one CPU from a task")
            .value(us(percentile(&mut in_task, 0.99)), "us")
            .floor(floor99),
    ])
}

/// `trips` calls of a 16-byte echo through a fresh pool, one in flight, after a tenth as many
/// to warm up; each one's duration. The calls are made from the future the runtime blocks on,
/// as a plain `main` makes them.
async fn pool_trips(s: &Setup, trips: usize) -> Result<Vec<Duration>, BoxError> {
    trips_through(s.builder, s.workers, trips).await
}

/// The same, with the calls made from a task spawned on the pool's runtime, as a server's
/// request handlers make them. A task woken by another task is polled straight away, where the
/// future a runtime blocks on is woken through the runtime, which looks at its reactor first.
async fn pool_trips_in_task(s: &Setup, trips: usize) -> Result<Vec<Duration>, BoxError> {
    let (builder, workers) = (s.builder, s.workers);
    let (tx, rx) = futures_channel::oneshot::channel();
    s.rt.spawn(Box::pin(async move {
        let times = trips_through(builder, workers, trips).await;
        let _ = tx.send(times.map_err(|e| e.to_string()));
    }));
    Ok(rx.await.map_err(|_| "the calling task was dropped")??)
}

async fn trips_through(
    builder: fn() -> Builder<Echo>,
    workers: usize,
    trips: usize,
) -> Result<Vec<Duration>, BoxError> {
    let pool = builder().workers(workers).start().await?;
    let task = ByteBuf::from(vec![7u8; 16]);
    let mut times = Vec::with_capacity(trips);
    for i in 0..trips + trips / 10 {
        let t = Instant::now();
        pool.call(task.clone()).await.map_err(|e| e.to_string())?;
        if i >= trips / 10 {
            times.push(t.elapsed());
        }
    }
    pool.stop().await;
    Ok(times)
}

/// `trips` raw round trips through a fresh echo peer, after a tenth as many to warm up.
fn floor_trips(trips: usize) -> Result<Vec<Duration>, BoxError> {
    let mut peer = Peer::start()?;
    peer.round_trips(trips / 10);
    Ok(peer.round_trips(trips))
}

/// 1 MiB tasks echoed, two in flight per worker: gigabytes per second each way.
pub(crate) async fn payload(s: &Setup, tasks: usize) -> Result<Vec<Report>, BoxError> {
    const MIB: usize = 1 << 20;
    let pool = (s.builder)()
        .workers(s.workers)
        .capacity(2)
        .result_credit(2)
        .max_frame(4 * MIB)
        .start()
        .await?;
    let task = ByteBuf::from(vec![7u8; MIB]);
    pump(&pool, &task, 8).await?;
    let took = pump(&pool, &task, tasks).await?;
    pool.stop().await;
    let gbps = |d: Duration| (tasks * MIB) as f64 / d.as_secs_f64() / 1e9;

    let mut peer = Peer::start()?;
    peer.pipelined(MIB, 8, 1);
    let floor = peer.pipelined(MIB, tasks, 1);
    Ok(vec![s
        .report("payload", "bandwidth")
        .value(gbps(took), "GB/s")
        .floor(gbps(floor))])
}

/// From `start()` to every worker ready, for 8 workers; and the respawn of one killed worker.
pub(crate) async fn startup(s: &Setup, rounds: usize) -> Result<Vec<Report>, BoxError> {
    const N: usize = 8;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut starts = Vec::new();
    let mut floors = Vec::new();
    let mut respawns = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let pool = (s.builder)().workers(N).start().await?;
        starts.push(t.elapsed());
        // The first replacement of a worker number is immediate (no back-off).
        let t = Instant::now();
        pool.kill_worker(0);
        loop {
            let w = &pool.stats().workers[0];
            if w.restarts == 1 && w.status == looppool_core::state::WorkerStatus::Ready {
                break;
            }
            s.rt.sleep(Duration::from_micros(200)).await;
        }
        respawns.push(t.elapsed());
        pool.stop().await;
        floors.push(floor::spawn_ready(N)?);
    }
    let startup = Report::new("startup", "8 workers", s.runtime, N);
    let respawn = Report::new("startup", "respawn", s.runtime, N);
    Ok(vec![
        startup
            .value(ms(percentile(&mut starts, 0.5)), "ms")
            .floor(ms(percentile(&mut floors, 0.5))),
        respawn.value(ms(percentile(&mut respawns, 0.5)), "ms"),
    ])
}

/// Resident memory of an idle worker process, beside that of the floor's echo peer (the same
/// program, blocked in a read).
pub(crate) async fn idle(s: &Setup) -> Result<Vec<Report>, BoxError> {
    let pool = (s.builder)().workers(s.workers).start().await?;
    // Let the workers settle: one round trip each, then a pause.
    for w in 0..s.workers {
        pool.call_to(w, ByteBuf::from(vec![1u8; 16]))
            .await
            .map_err(|e| e.to_string())?;
    }
    s.rt.sleep(Duration::from_millis(200)).await;
    let mut rss = 0;
    for w in 0..s.workers {
        let pid = pool.pid(w).ok_or("a worker has no pid")?;
        rss = rss.max(resident(pid)?);
    }
    pool.stop().await;
    let mut peer = Peer::start()?;
    // One round trip: the peer has started and sits in its read.
    peer.round_trips(1);
    let peer_rss = resident(peer.pid())?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    Ok(vec![s
        .report("idle", "rss")
        .value(mib(rss), "MiB")
        .floor(mib(peer_rss))])
}

/// A process's resident memory, in bytes.
pub(crate) fn resident(pid: u32) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or("no VmRSS")?;
    Ok(kib * 1024)
}

/// Replacements over the pool's life.
fn stopped_restarts<W: Worker>(pool: &Pool<W>) -> u64 {
    pool.stats().workers.iter().map(|w| w.restarts).sum()
}

/// The parent's open descriptors.
fn open_fds() -> Result<usize, BoxError> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count())
}

/// Runs a steady load until `seconds` pass, printing progress each second, while every worker
/// is recycled after 50 tasks and a random worker is killed every half second (workers, or the
/// parent, may also be killed from outside). Lost tasks are retried, workers replaced; it fails
/// if any task is lost, any worker number is given up, or the parent's memory or descriptors
/// grow between the first and the last quarter of the run.
pub(crate) async fn soak(s: &Setup, seconds: u64) -> Result<Vec<Report>, BoxError> {
    let pool = (s.builder)()
        .workers(s.workers)
        .capacity(32)
        .result_credit(64)
        .retries(3)
        .recycle_after_tasks(50)
        .restart_limit(1000, Duration::from_secs(60))
        .start()
        .await?;
    println!(
        "soak: parent pid {}, {} workers",
        std::process::id(),
        s.workers
    );
    let task = spin_task(Duration::from_micros(50));
    let outputs = pool.outputs();
    let ended = std::cell::Cell::new(0u64);
    let lost = std::cell::Cell::new(0u64);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let submit = async {
        let mut running = futures_util::stream::FuturesUnordered::new();
        while Instant::now() < deadline {
            let handle = pool.submit(task.clone()).await.map_err(|e| e.to_string())?;
            running.push(handle);
            // Settle finished handles as we go, so that their number stays bounded.
            while running.len() > 1024 {
                match running.next().await {
                    Some(Ok(())) => ended.set(ended.get() + 1),
                    Some(Err(_)) => lost.set(lost.get() + 1),
                    None => break,
                }
            }
        }
        while let Some(result) = running.next().await {
            match result {
                Ok(()) => ended.set(ended.get() + 1),
                Err(_) => lost.set(lost.get() + 1),
            }
        }
        Ok::<_, BoxError>(())
    };
    let take = async { while outputs.recv().await.is_some() {} };
    let kills = std::cell::Cell::new(0u64);
    // (resident bytes, open descriptors) of the parent a quarter into the run.
    let early = std::cell::Cell::new(None);
    let progress = async {
        let started = Instant::now();
        let mut before = 0;
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        loop {
            for _ in 0..2 {
                s.rt.sleep(Duration::from_millis(500)).await;
                // xorshift: a reproducible choice of victim.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                pool.kill_worker(seed as usize % s.workers);
                kills.set(kills.get() + 1);
            }
            if early.get().is_none() && started.elapsed().as_secs() * 4 >= seconds {
                early.set(Some((resident(std::process::id())?, open_fds()?)));
            }
            let stats = pool.stats();
            let restarts: u64 = stats.workers.iter().map(|w| w.restarts).sum();
            let pids: Vec<_> = stats.workers.iter().map(|w| w.pid).collect();
            let now = ended.get();
            println!(
                "soak: {:>4.0?} {now} tasks ({}/s), {} lost, {restarts} restarts, {} kills, pids \
                 {pids:?}",
                started.elapsed(),
                now - before,
                lost.get(),
                kills.get()
            );
            before = now;
        }
        #[allow(unreachable_code)]
        Ok::<(), BoxError>(())
    };
    // The submitter ends the soak; the taker and the progress printer run until then.
    let (submit, take, progress) = (pin!(submit), pin!(take), pin!(progress));
    let submitted = match select(submit, select(take, progress)).await {
        Either::Left((submitted, _)) => submitted,
        Either::Right((Either::Right((Err(e), _)), _)) => Err(e),
        Either::Right(_) => Err("the soak ended early".into()),
    };
    let late = (resident(std::process::id())?, open_fds()?);
    let given_up = pool
        .stats()
        .workers
        .iter()
        .filter(|w| w.status == looppool_core::state::WorkerStatus::Exited)
        .count();
    let stopped = pool.stop().await;
    submitted?;
    let restarts: u64 = stopped_restarts(&pool);
    println!(
        "soak: {} tasks ended, {} lost, {restarts} replacements ({} kills, the rest recycling), \
         {given_up} worker numbers given up, stop graceful: {}",
        ended.get(),
        lost.get(),
        kills.get(),
        stopped.is_graceful()
    );
    if let Some((rss, fds)) = early.get() {
        println!(
            "soak: parent resident memory {:.1} MiB then {:.1} MiB, descriptors {fds} then {}",
            rss as f64 / (1 << 20) as f64,
            late.0 as f64 / (1 << 20) as f64,
            late.1
        );
        // A replacement under way holds a link and a pidfd more or less at either moment.
        if late.1 > fds + 4 * s.workers || late.0 > rss + rss / 4 {
            return Err("the parent's memory or descriptors grew during the soak".into());
        }
    }
    if lost.get() > 0 {
        return Err(format!("{} tasks were lost", lost.get()).into());
    }
    if given_up > 0 {
        return Err(format!("{given_up} worker numbers were given up").into());
    }
    Ok(vec![s
        .report("soak", "rate")
        .value(ended.get() as f64 / seconds as f64, "tasks/s")])
}
