//! A pool's per-worker metrics, exported for Prometheus on a loopback port.
//!
//! The pool publishes through the `metrics` facade; this program installs the Prometheus
//! recorder, serves its rendering at `http://127.0.0.1:<port>/metrics`, runs some jobs, then
//! scrapes itself over HTTP and prints the pool's series: per worker, CPU, memory, loop lag,
//! runtime tasks, task counts and latencies.
//!
//! ```text
//! cargo run --release --example metrics                 # scrape once, print, exit
//! cargo run --release --example metrics -- --serve      # keep serving until Ctrl-C
//! ```

use looppool::{async_trait, BoxError, Context, Failure, Worker};
use looppool_examples::http::{response, serve, Client};
use metrics_exporter_prometheus::PrometheusBuilder;
use std::time::Duration;
use tokio::net::TcpListener;

/// Hashes a buffer `rounds` times: CPU work that shows up in the workers' CPU gauges.
struct Hasher;

#[async_trait(?Send)]
impl Worker for Hasher {
    type Task = u32;
    type Output = u64;
    type Error = Failure;

    async fn init(_ctx: &Context<u64>) -> Result<Self, BoxError> {
        Ok(Hasher)
    }

    async fn process(&self, rounds: u32, ctx: &Context<u64>) -> Result<(), Failure> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for i in 0..u64::from(rounds) * 1000 {
            h = (h ^ i).wrapping_mul(0x0100_0000_01b3);
        }
        if rounds.is_multiple_of(7) {
            return Err(Failure::msg(format!(
                "{rounds} rounds: multiples of seven are refused"
            )));
        }
        ctx.put(h).await?;
        Ok(())
    }
}

fn main() -> Result<(), BoxError> {
    looppool::init(&[looppool::worker::<Hasher>()]);
    let keep_serving = std::env::args().any(|a| a == "--serve");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(keep_serving))
}

async fn run(keep_serving: bool) -> Result<(), BoxError> {
    // Install the recorder before the pool starts: the pool registers its series at start.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/metrics", listener.local_addr()?);
    let handle = prometheus.clone();
    tokio::task::spawn_local(serve(listener, move |_request| {
        let handle = handle.clone();
        async move {
            handle.run_upkeep();
            response(
                handle.render(),
                &[("content-type", "text/plain; version=0.0.4")],
            )
        }
    }));
    println!("serving metrics at {url}");

    let pool = looppool::builder::<Hasher>()
        .name("metrics-demo")
        .workers(2)
        .stats_interval(Some(Duration::from_millis(200)))
        .start()
        .await?;
    // Take the outputs as they come: each worker may emit only `result_credit` outputs that
    // nobody took before it waits.
    let outputs = pool.outputs();
    tokio::task::spawn_local(async move { while outputs.recv().await.is_some() {} });
    let mut handles = Vec::new();
    for rounds in 1..=40u32 {
        handles.push(pool.submit(rounds * 50).await?);
    }
    let mut failed = 0;
    for handle in handles {
        failed += usize::from(handle.await.is_err());
    }
    println!("40 jobs ran, {failed} refused by the worker");

    // Wait for a report from every worker after the jobs, so that the gauges are current.
    let after = std::time::Instant::now();
    loop {
        let stats = pool.stats();
        let fresh = stats
            .workers
            .iter()
            .all(|w| w.reported_at.is_some_and(|t| t > after));
        if fresh {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, _, body) = Client::new().get(&url).await?;
    println!("scraped {url}: HTTP {status}, {} bytes", body.len());
    for line in String::from_utf8_lossy(&body).lines() {
        if line.starts_with("looppool_") {
            println!("  {line}");
        }
    }
    if keep_serving {
        println!("serving until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    let stopped = pool.stop().await;
    println!("pool stopped (graceful: {})", stopped.is_graceful());
    Ok(())
}
