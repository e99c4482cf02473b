//! `looppool-bench`: looppool's benchmarks, each beside the physical floor measured in the same
//! run (a raw Unix socketpair between two processes, with no framing and no serde).
//!
//! ```text
//! cargo run --release -p looppool-bench -- <scenario> [--runtime tokio|smol|async-std]
//!                                          [--workers N] [--json] [--seconds S]
//! ```
//!
//! Scenarios: `throughput`, `latency`, `payload`, `startup`, `idle`, `offload` (tokio), `soak`,
//! and `all` (every one but `soak`); over NATS JetStream (tokio, with `LOOPPOOL_NATS_URL` naming
//! the server): `nats-throughput`, `nats-latency`, and `nats` (both).

mod cpus;
mod floor;
mod nats;
mod nats_floor;
mod offload;
mod report;
mod scenarios;

use looppool_async_std::AsyncStd;
use looppool_core::{BoxError, Builder, Pool};
use looppool_smol::Smol;
use report::Report;
use scenarios::{Echo, Setup};
use std::sync::{Arc, OnceLock};

/// Tells re-executed workers which runtime the parent runs: they do not see its arguments.
const RUNTIME_VAR: &str = "LOOPPOOL_BENCH_RUNTIME";

const USAGE: &str =
    "usage: looppool-bench <throughput|latency|payload|startup|idle|offload|soak|all|nats|\
nats-throughput|nats-latency> \
[--runtime tokio|smol|async-std] [--workers N] [--json] [--seconds S] [--scale X]";

struct Args {
    scenario: String,
    runtime: &'static str,
    workers: usize,
    json: bool,
    seconds: u64,
    /// Scales the number of tasks (or round trips) a scenario runs.
    scale: f64,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut parsed = Args {
        scenario: String::new(),
        runtime: "tokio",
        workers: 2,
        json: false,
        seconds: 10,
        scale: 1.0,
    };
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().ok_or(format!("{arg} needs {what}"));
        match arg.as_str() {
            "--runtime" => {
                parsed.runtime = match value("a runtime")?.as_str() {
                    "tokio" => "tokio",
                    "smol" => "smol",
                    "async-std" => "async-std",
                    other => return Err(format!("unknown runtime {other:?}")),
                }
            }
            "--workers" => {
                parsed.workers = value("a number")?
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or("--workers needs a positive number")?
            }
            "--seconds" => {
                parsed.seconds = value("a number")?
                    .parse()
                    .map_err(|_| "--seconds needs a number")?
            }
            "--scale" => {
                parsed.scale = value("a number")?
                    .parse()
                    .ok()
                    .filter(|&x: &f64| x > 0.0)
                    .ok_or("--scale needs a positive number")?
            }
            "--json" => parsed.json = true,
            "-h" | "--help" => return Err(USAGE.into()),
            s if parsed.scenario.is_empty() && !s.starts_with('-') => parsed.scenario = s.into(),
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    if parsed.scenario.is_empty() {
        return Err(USAGE.into());
    }
    Ok(parsed)
}

fn main() {
    // Worker processes are this program started again; they run on the parent's runtime.
    match std::env::var(RUNTIME_VAR).as_deref() {
        Ok("smol") => looppool_smol::init(&[looppool_smol::worker::<Echo>()]),
        Ok("async-std") => looppool_async_std::init(&[looppool_async_std::worker::<Echo>()]),
        _ => looppool_tokio::init(&[looppool_tokio::worker::<Echo>()]),
    }
    match std::env::args().nth(1).as_deref() {
        Some(floor::PEER_ARG) => return floor::peer_main(),
        Some(nats::MEMBER_ARG) => return nats::member_main(),
        Some(nats_floor::PEER_ARG) => return nats_floor::peer_main(),
        Some(floor::READY_ARG) => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(b"r");
            return;
        }
        _ => {}
    }
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    std::env::set_var(RUNTIME_VAR, args.runtime);
    if let Err(e) = run(&args) {
        eprintln!("looppool-bench {}: {e}", args.scenario);
        std::process::exit(1);
    }
}

/// The executor the smol and async-std runs block on.
fn main_executor() -> Arc<smol::Executor<'static>> {
    static EXECUTOR: OnceLock<Arc<smol::Executor<'static>>> = OnceLock::new();
    EXECUTOR.get_or_init(Default::default).clone()
}

fn smol_builder() -> Builder<Echo> {
    Pool::builder(Arc::new(Smol::with_executor(main_executor())))
}

fn async_std_builder() -> Builder<Echo> {
    Pool::builder(Arc::new(AsyncStd::with_executor(main_executor())))
}

fn run(args: &Args) -> Result<(), BoxError> {
    let setup = |builder: fn() -> Builder<Echo>, rt| Setup {
        rt,
        builder,
        runtime: args.runtime,
        workers: args.workers,
    };
    match args.runtime {
        // The pool's tasks run on the executor `main` blocks on, as a latency-minded smol
        // program runs them (and as tokio's current-thread runtime does): on smol's global
        // executor each reply would cross two threads.
        "smol" => {
            let executor = main_executor();
            smol::block_on(executor.run(scenarios_on(
                &setup(
                    smol_builder,
                    Arc::new(Smol::with_executor(executor.clone())),
                ),
                args,
            )))
        }
        // Likewise: async-std's own thread pool would put each reply across two threads.
        "async-std" => {
            let executor = main_executor();
            async_std::task::block_on(executor.run(scenarios_on(
                &setup(
                    async_std_builder,
                    Arc::new(AsyncStd::with_executor(executor.clone())),
                ),
                args,
            )))
        }
        _ => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let local = tokio::task::LocalSet::new();
            local.block_on(
                &rt,
                scenarios_on(
                    &setup(looppool_tokio::builder::<Echo>, looppool_tokio::runtime()),
                    args,
                ),
            )
        }
    }
}

async fn scenarios_on(s: &Setup, args: &Args) -> Result<(), BoxError> {
    let all = [
        "throughput",
        "latency",
        "payload",
        "startup",
        "idle",
        "offload",
    ];
    let chosen: Vec<&str> = match args.scenario.as_str() {
        "all" if s.runtime == "tokio" => all.to_vec(),
        "all" => all[..5].to_vec(),
        one => vec![one],
    };
    let n = |base: usize| ((base as f64 * args.scale) as usize).max(10);
    for scenario in chosen {
        let reports: Vec<Report> = match scenario {
            "throughput" => scenarios::throughput(s, n(300_000)).await?,
            "latency" => scenarios::latency(s, n(20_000)).await?,
            "payload" => scenarios::payload(s, n(256)).await?,
            "startup" => scenarios::startup(s, 7).await?,
            "idle" => scenarios::idle(s).await?,
            "offload" => {
                let mut both = offload::offload(s, n(2000)).await?;
                both.extend(offload::mixed(s, n(2000)).await?);
                both
            }
            "soak" => scenarios::soak(s, args.seconds).await?,
            "nats-throughput" => nats::throughput(s, n(100_000)).await?,
            "nats-latency" => nats::latency(s, n(5_000)).await?,
            "nats" => {
                let mut both = nats::throughput(s, n(100_000)).await?;
                both.extend(nats::latency(s, n(5_000)).await?);
                both
            }
            other => return Err(format!("unknown scenario {other:?}\n{USAGE}").into()),
        };
        for r in reports {
            println!("{}", if args.json { r.json() } else { r.line() });
        }
    }
    Ok(())
}
