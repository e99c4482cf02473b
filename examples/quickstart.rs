//! CPU-heavy work in a pool of worker processes while the parent's event loop stays responsive.
//!
//! The parent runs one event loop on one thread, like Tornado's. A heartbeat on it ticks every
//! 10 ms and records how late each tick fires. First the jobs run in the pool, each worker a
//! separate process with its own runtime; then the same jobs run inline on the parent's loop.
//! The heartbeat's worst lateness shows the difference.
//!
//! ```text
//! cargo run --release --example quickstart                        # tokio
//! cargo run --release --example quickstart -- --runtime smol      # or async-std
//! cargo run --release --example quickstart -- --quick             # small jobs
//! ```
//!
//! On tokio, Ctrl-C stops the pool gracefully: the workers (which ignore the terminal's
//! SIGINT) finish the jobs they hold, their results are printed, and the program ends.

use futures_util::future::{select, Either};
use looppool::{async_trait, BoxError, Builder, Context, Failure, Runtime, Worker};
use std::cell::Cell;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::SignalKind;

/// Counts the primes below `limit` by trial division: a stand-in for any CPU-heavy job.
fn count_primes(limit: u64) -> u64 {
    fn is_prime(n: u64) -> bool {
        if n < 4 {
            return n >= 2;
        }
        if n.is_multiple_of(2) {
            return false;
        }
        let mut d = 3;
        while d * d <= n {
            if n.is_multiple_of(d) {
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
    type Error = Failure;

    async fn init(_ctx: &Context<Self::Output>) -> Result<Self, BoxError> {
        Ok(Primes)
    }

    async fn process(&self, limit: u64, ctx: &Context<Self::Output>) -> Result<(), Failure> {
        let started = Instant::now();
        let count = count_primes(limit);
        ctx.put((limit, count, started.elapsed().as_millis() as u64))
            .await?;
        Ok(())
    }
}

/// Runs `work` while a heartbeat ticks every 10 ms on the same loop; returns what `work`
/// returned and the heartbeat's worst lateness.
async fn with_heartbeat<T>(
    rt: &dyn Runtime,
    work: impl std::future::Future<Output = T>,
) -> (T, Duration) {
    let worst = Cell::new(Duration::ZERO);
    let beat = async {
        let period = Duration::from_millis(10);
        let mut next = Instant::now() + period;
        loop {
            rt.sleep(next.saturating_duration_since(Instant::now()))
                .await;
            worst.set(
                worst
                    .get()
                    .max(Instant::now().saturating_duration_since(next)),
            );
            next += period;
        }
    };
    let value = match select(pin!(work), pin!(beat)).await {
        Either::Left((value, _)) => value,
        Either::Right(((), _)) => unreachable!("the heartbeat never ends"),
    };
    (value, worst.get())
}

/// Yields to the loop once, as a well-behaved handler does between chunks of work.
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

async fn run(
    rt: Arc<dyn Runtime>,
    builder: Builder<Primes>,
    jobs: Vec<u64>,
    interrupt: impl std::future::Future<Output = ()>,
) -> Result<(), BoxError> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let started = Instant::now();
    let pool = builder.name("quickstart").workers(workers).start().await?;
    println!(
        "started {workers} worker processes in {:.1?}",
        started.elapsed()
    );

    println!("\n{} jobs in the pool:", jobs.len());
    let started = Instant::now();
    let outputs = pool.outputs();
    let submitted = async {
        for &limit in &jobs {
            // Waits while the next worker in turn has its queue full: back-pressure. The results
            // come on the output stream, so the task handle is not needed.
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
    let work = with_heartbeat(&*rt, futures_util::future::join(submitted, received));
    let ((submitted, ()), worst) = match select(pin!(work), pin!(interrupt)).await {
        Either::Left((done, _)) => done,
        Either::Right(((), _)) => {
            println!(
                "\ninterrupted: stopping the pool gracefully; the jobs the workers hold finish"
            );
            let stopped = pool.stop().await;
            while let Some(out) = outputs.try_recv() {
                let (limit, count, _) = *out;
                println!(
                    "  worker {}: {count} primes below {limit} (finished during the stop)",
                    out.worker()
                );
            }
            println!("pool stopped (graceful: {})", stopped.is_graceful());
            return Ok(());
        }
    };
    submitted?;
    let in_pool = started.elapsed();
    println!("  all done in {in_pool:.2?}; the parent's loop was at most {worst:.1?} late");

    let stopped = pool.stop().await;
    println!("\npool stopped (graceful: {})", stopped.is_graceful());

    println!("\nthe same jobs inline on the parent's loop:");
    let started = Instant::now();
    let inline_jobs = async {
        for &limit in &jobs {
            yield_now().await;
            let count = count_primes(limit);
            println!(
                "  parent: {count} primes below {limit} (at {:.2?})",
                started.elapsed()
            );
        }
    };
    let ((), worst) = with_heartbeat(&*rt, inline_jobs).await;
    let inline = started.elapsed();
    println!("  all done in {inline:.2?}; the parent's loop was at most {worst:.1?} late");
    println!("\nin the pool: {in_pool:.2?} and a responsive loop; inline: {inline:.2?} and a loop blocked by each job");
    Ok(())
}

/// Tells re-executed workers which runtime the parent chose: they do not see its arguments.
const RUNTIME_VAR: &str = "LOOPPOOL_QUICKSTART_RUNTIME";

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = args
        .iter()
        .position(|a| a == "--runtime")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(RUNTIME_VAR).ok())
        .unwrap_or_else(|| "tokio".into());

    // Worker processes are this executable started again; this makes them workers. A program
    // on one runtime needs just the one line, e.g. `looppool::init(&[worker::<Primes>()])`.
    match runtime.as_str() {
        "tokio" => looppool::init(&[looppool::worker::<Primes>()]),
        "smol" => looppool::rt::smol::init(&[looppool::rt::smol::worker::<Primes>()]),
        "async-std" => {
            looppool::rt::async_std::init(&[looppool::rt::async_std::worker::<Primes>()])
        }
        other => {
            return Err(format!("unknown runtime {other:?}: use tokio, smol or async-std").into())
        }
    }
    std::env::set_var(RUNTIME_VAR, &runtime);

    let number = |flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1)?.parse::<u64>().ok()
    };
    let jobs: Vec<u64> = match number("--size") {
        // `--size N --jobs J`: J jobs of N each.
        Some(size) => vec![size; number("--jobs").unwrap_or(8) as usize],
        None if args.iter().any(|a| a == "--quick") => vec![20_000; 4],
        None => (0..8).map(|i| 2_000_000 + i * 250_000).collect(),
    };
    println!("parent and workers on {runtime}");
    match runtime.as_str() {
        // Without a signal handler, Ctrl-C ends the parent at once; its workers die with it.
        "smol" => smol::block_on(run(
            looppool::rt::smol::runtime(),
            looppool::rt::smol::builder(),
            jobs,
            std::future::pending(),
        )),
        "async-std" => async_std::task::block_on(run(
            looppool::rt::async_std::runtime(),
            looppool::rt::async_std::builder(),
            jobs,
            std::future::pending(),
        )),
        _ => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                // Listen before the first job goes out, so that an early Ctrl-C is not lost
                // (`ctrl_c()` would only start listening when first polled).
                let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt())?;
                run(looppool::runtime(), looppool::builder(), jobs, async move {
                    interrupt.recv().await;
                })
                .await
            })
        }
    }
}
