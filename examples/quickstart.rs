//! CPU-heavy work in a pool of tokio workers while the parent's event loop stays responsive.
//!
//! The parent runs a single-threaded tokio runtime: one event loop, like Tornado's. A heartbeat
//! task on it ticks every 10 ms and records how late each tick fires. First the jobs run in the
//! pool, each worker a separate process with its own runtime; then the same jobs run inline on
//! the parent's loop. The heartbeat's worst lateness shows the difference.
//!
//! Run it with `cargo run --release --example quickstart` (`-- --quick` for small jobs). Ctrl-C
//! stops the pool gracefully: running jobs finish and their results are printed.

use looppool_tokio::{async_trait, BoxError, Context, Worker};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Counts the primes below `limit` by trial division: a stand-in for any CPU-heavy job.
fn count_primes(limit: u64) -> u64 {
    fn is_prime(n: u64) -> bool {
        if n < 4 {
            return n >= 2;
        }
        if n % 2 == 0 {
            return false;
        }
        let mut d = 3;
        while d * d <= n {
            if n % d == 0 {
                return false;
            }
            d += 2;
        }
        true
    }
    (2..limit).filter(|&n| is_prime(n)).count() as u64
}

/// The worker: built once in each worker process, then given jobs on that process's loop.
struct Primes;

#[async_trait(?Send)]
impl Worker for Primes {
    /// A job: count the primes below this number.
    type Task = u64;
    /// The result: the limit, the count, and how long the worker took, in milliseconds.
    type Output = (u64, u64, u64);

    async fn init(_ctx: &Context<Self::Output>) -> Result<Self, BoxError> {
        Ok(Primes)
    }

    async fn process(&self, limit: u64, ctx: &Context<Self::Output>) -> Result<(), BoxError> {
        let started = Instant::now();
        let count = count_primes(limit);
        ctx.put((limit, count, started.elapsed().as_millis() as u64))
            .await?;
        Ok(())
    }
}

/// Ticks every 10 ms on the current loop and remembers the worst lateness seen.
fn heartbeat() -> Rc<Cell<Duration>> {
    let worst = Rc::new(Cell::new(Duration::ZERO));
    let seen = worst.clone();
    tokio::task::spawn_local(async move {
        let period = Duration::from_millis(10);
        let mut next = Instant::now() + period;
        loop {
            tokio::time::sleep_until(next.into()).await;
            let late = Instant::now().saturating_duration_since(next);
            seen.set(seen.get().max(late));
            next += period;
        }
    });
    worst
}

async fn run(jobs: Vec<u64>) -> Result<(), BoxError> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let started = Instant::now();
    let pool = looppool_tokio::builder::<Primes>()
        .name("quickstart")
        .workers(workers)
        .start()
        .await?;
    println!(
        "started {workers} worker processes in {:.1?}",
        started.elapsed()
    );

    println!("\n{} jobs in the pool:", jobs.len());
    let worst = heartbeat();
    let started = Instant::now();
    let outputs = pool.outputs();
    let submitted = async {
        for &limit in &jobs {
            // Waits while the next worker in turn has its queue full: back-pressure.
            // The results come on the output stream, so the task handle is not needed.
            drop(pool.submit(limit).await?);
        }
        Ok::<_, BoxError>(())
    };
    let received = async {
        for _ in 0..jobs.len() {
            let Some(out) = outputs.recv().await else {
                break;
            };
            let (limit, count, ms) = *out;
            println!(
                "  worker {}: {count} primes below {limit} ({ms} ms in the worker, at {:.2?})",
                out.worker(),
                started.elapsed()
            );
        }
    };
    let (submitted, ()) = tokio::join!(submitted, received);
    submitted?;
    let in_pool = started.elapsed();
    println!(
        "  all done in {in_pool:.2?}; the parent's loop was at most {:.1?} late",
        worst.get()
    );

    let stopped = pool.stop().await;
    println!("\npool stopped (graceful: {})", stopped.is_graceful());

    println!("\nthe same jobs inline on the parent's loop:");
    let worst = heartbeat();
    tokio::task::yield_now().await;
    let started = Instant::now();
    for &limit in &jobs {
        let count = count_primes(limit);
        println!(
            "  parent: {count} primes below {limit} (at {:.2?})",
            started.elapsed()
        );
        // Give the heartbeat a chance to run, as a well-behaved handler would.
        tokio::task::yield_now().await;
    }
    let inline = started.elapsed();
    println!(
        "  all done in {inline:.2?}; the parent's loop was at most {:.1?} late",
        worst.get()
    );
    println!(
        "\nin the pool: {in_pool:.2?} and a responsive loop; inline: {inline:.2?} and a loop blocked \
         for each job"
    );
    Ok(())
}

fn main() -> Result<(), BoxError> {
    // Worker processes are this executable started again; this line makes them workers.
    looppool_tokio::init(&[looppool_tokio::worker::<Primes>()]);

    let quick = std::env::args().any(|a| a == "--quick");
    let jobs: Vec<u64> = if quick {
        vec![20_000; 4]
    } else {
        (0..8).map(|i| 2_000_000 + i * 250_000).collect()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&runtime, async {
        tokio::select! {
            done = run(jobs) => done,
            _ = tokio::signal::ctrl_c() => {
                // Dropping `run` drops its pool, which kills the workers at once; a program
                // that must let running jobs finish calls `pool.stop().await` here instead.
                println!("\ninterrupted: the pool is dropped and its workers are gone");
                Ok(())
            }
        }
    })
}
