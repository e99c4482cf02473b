//! The throughput and latency scenarios over NATS JetStream: the parent here, each member a
//! process of this program with one worker process, the server the one `LOOPPOOL_NATS_URL`
//! names (start one with `transport-nats/scripts/nats-server.sh start`). Each is reported
//! beside its floor ([`crate::nats_floor`]), measured in the same run.

use crate::nats_floor::Floor;
use crate::report::{percentile, Report};
use crate::scenarios::{timed, Echo, Setup};
use futures_util::StreamExt;
use looppool_core::BoxError;
use looppool_nats::{Member, Pool, Secret};
use serde_bytes::ByteBuf;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Makes this program a member: `nats-member URL POOL NAME CAPACITY`.
pub(crate) const MEMBER_ARG: &str = "nats-member";

/// Tasks in flight across the pool in the throughput scenario.
const WINDOW: usize = 256;

pub(crate) fn member_main() {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let [url, pool, name, capacity] = &args[..] else {
        eprintln!("usage: {MEMBER_ARG} URL POOL NAME CAPACITY");
        std::process::exit(2);
    };
    let capacity: usize = capacity.parse().unwrap_or(2);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let local = looppool_tokio::builder::<Echo>()
        .workers(1)
        .capacity(capacity)
        .result_credit(capacity);
    if let Err(e) = rt.block_on(Member::new(url, pool, local).name(name).run()) {
        eprintln!("member {name}: {e}");
        std::process::exit(1);
    }
}

fn url() -> Result<String, BoxError> {
    std::env::var("LOOPPOOL_NATS_URL").map_err(|_| {
        "set LOOPPOOL_NATS_URL to a NATS server with JetStream (start one with \
         `transport-nats/scripts/nats-server.sh start`)"
            .into()
    })
}

/// A pool over NATS with `members` member processes joined; the processes are reaped on drop.
struct Cluster {
    pool: Pool<Echo>,
    members: Vec<Child>,
}

impl Cluster {
    async fn start(name: &str, members: usize, capacity: usize) -> Result<Self, BoxError> {
        let url = url()?;
        // Members find it in their environment.
        let secret = Secret::generate();
        let pool = Pool::<Echo>::builder(&url, name)
            .secret(secret.clone())
            .result_credit(WINDOW)
            .start()
            .await?;
        let exe = std::env::current_exe()?;
        let members = (0..members)
            .map(|k| {
                Command::new(&exe)
                    .args([MEMBER_ARG, &url, name, &format!("m{k}")])
                    .arg(capacity.to_string())
                    .env(
                        looppool_nats::SECRET_VAR,
                        OsStr::from_bytes(secret.expose()),
                    )
                    .stdout(Stdio::null())
                    .spawn()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = Self { pool, members };
        cluster
            .pool
            .wait_for_members(cluster.members.len(), Duration::from_secs(30))
            .await?;
        Ok(cluster)
    }

    async fn stop(mut self) {
        self.pool.stop().await;
        for m in &mut self.members {
            let _ = m.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Ok(None) = m.try_wait() {
                let _ = m.kill();
                let _ = m.wait();
            }
        }
    }
}

/// Sends `tasks` tasks with `WINDOW` submissions under way while taking every output.
async fn pump(pool: &Pool<Echo>, task: &ByteBuf, tasks: usize) -> Result<Duration, BoxError> {
    let outputs = pool.outputs();
    let submit = futures_util::stream::iter(0..tasks)
        .map(|_| async move { pool.submit(task.clone()).await.map(drop) })
        .buffer_unordered(WINDOW)
        .fold(Ok(()), |acc, r| async move {
            acc.and(r.map_err(|e| e.to_string()))
        });
    timed(submit, tasks, || outputs.recv()).await
}

/// Echo tasks of 16 bytes, 256 in flight, over NATS: tasks per second.
pub(crate) async fn throughput(s: &Setup, tasks: usize) -> Result<Vec<Report>, BoxError> {
    let floor = Floor::start(&url()?, s.workers, WINDOW.div_ceil(s.workers)).await?;
    floor.pipelined(tasks / 10, WINDOW).await?;
    let floor_took = floor.pipelined(tasks, WINDOW).await?;
    floor.stop().await;
    let cluster = Cluster::start("bench-rate", s.workers, WINDOW.div_ceil(s.workers)).await?;
    let task = ByteBuf::from(vec![7u8; 16]);
    pump(&cluster.pool, &task, tasks / 10).await?;
    let took = pump(&cluster.pool, &task, tasks).await?;
    cluster.stop().await;
    Ok(vec![s
        .report("nats-throughput", "rate")
        .value(tasks as f64 / took.as_secs_f64(), "tasks/s")
        .floor(tasks as f64 / floor_took.as_secs_f64())])
}

/// One task in flight over NATS: round-trip p50 and p99, from submission to its output.
pub(crate) async fn latency(s: &Setup, trips: usize) -> Result<Vec<Report>, BoxError> {
    let floor = Floor::start(&url()?, s.workers, 2).await?;
    let mut floor_times = floor.trips(trips).await?;
    floor.stop().await;
    let cluster = Cluster::start("bench-latency", s.workers, 2).await?;
    let outputs = cluster.pool.outputs();
    let task = ByteBuf::from(vec![7u8; 16]);
    let mut times = Vec::with_capacity(trips);
    for i in 0..trips + trips / 10 {
        let t = Instant::now();
        let handle = cluster.pool.submit(task.clone()).await?;
        outputs.recv().await.ok_or("the output stream ended")?;
        handle.await?;
        if i >= trips / 10 {
            times.push(t.elapsed());
        }
    }
    cluster.stop().await;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(vec![
        s.report("nats-latency", "p50")
            .value(us(percentile(&mut times, 0.50)), "us")
            .floor(us(percentile(&mut floor_times, 0.50))),
        s.report("nats-latency", "p99")
            .value(us(percentile(&mut times, 0.99)), "us")
            .floor(us(percentile(&mut floor_times, 0.99))),
    ])
}
