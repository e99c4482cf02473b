//! The throughput and latency scenarios of looppool-bench on a `procspawn::Pool`, printing
//! looppool-bench's JSON lines (no floor: compare with the floor looppool-bench prints on the
//! same machine).
//!
//! `cargo run --release -- throughput|latency|payload|startup|idle [--workers N] [--tasks N]`

use serde_bytes::ByteBuf;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const WINDOW: usize = 256;

fn report(scenario: &str, metric: &str, workers: usize, value: f64, unit: &str) {
    println!(
        "{{\"scenario\":\"{scenario}\",\"metric\":\"{metric}\",\"runtime\":\"procspawn-1\",\"workers\":{workers},\"value\":{value:.3},\"unit\":\"{unit}\",\"floor\":null,\"ratio\":null}}"
    );
}

fn echo(task: ByteBuf) -> ByteBuf {
    task
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn resident(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// Runs `tasks` echoes of `task` with at most `window` in flight; the time it took.
fn pump(pool: &procspawn::Pool, task: &ByteBuf, tasks: usize, window: usize) -> Duration {
    let started = Instant::now();
    let mut in_flight = VecDeque::new();
    for _ in 0..tasks {
        if in_flight.len() == window {
            let handle: procspawn::JoinHandle<ByteBuf> = in_flight.pop_front().unwrap();
            handle.join().expect("an echo");
        }
        in_flight.push_back(pool.spawn(task.clone(), echo));
    }
    for handle in in_flight {
        handle.join().expect("an echo");
    }
    started.elapsed()
}

fn main() {
    procspawn::init();
    let args: Vec<String> = std::env::args().collect();
    let number = |flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1)?.parse::<usize>().ok()
    };
    let workers = number("--workers").unwrap_or(2);
    let pool = procspawn::Pool::new(workers).expect("a procspawn pool");
    let task = ByteBuf::from(vec![7u8; 16]);
    match args.get(1).map(String::as_str) {
        Some("throughput") => {
            let tasks = number("--tasks").unwrap_or(50_000);
            let took = pump(&pool, &task, tasks, WINDOW);
            report(
                "throughput",
                "rate",
                workers,
                tasks as f64 / took.as_secs_f64(),
                "tasks/s",
            );
        }
        Some("payload") => {
            let tasks = number("--tasks").unwrap_or(64);
            let size = number("--size").unwrap_or(1 << 20);
            let blob = ByteBuf::from(vec![7u8; size]);
            let took = pump(&pool, &blob, tasks, 2 * workers);
            let gbps = (tasks * size) as f64 / took.as_secs_f64() / 1e9;
            report("payload", "bandwidth", workers, gbps, "GB/s");
        }
        Some("startup") => {
            // From building a pool of 8 to 8 tasks answered (procspawn cannot target a worker).
            let mut times: Vec<Duration> = (0..7)
                .map(|_| {
                    let t = Instant::now();
                    let pool = procspawn::Pool::new(8).expect("a procspawn pool");
                    pump(&pool, &task, 8, 8);
                    let took = t.elapsed();
                    pool.shutdown();
                    took
                })
                .collect();
            times.sort_unstable();
            report(
                "startup",
                "8 workers",
                8,
                times[3].as_secs_f64() * 1e3,
                "ms",
            );
        }
        Some("idle") => {
            // Ask until every worker has said who it is.
            let mut pids = std::collections::BTreeSet::new();
            for _ in 0..1000 {
                if pids.len() == workers {
                    break;
                }
                pids.insert(pool.spawn((), pid).join().expect("a pid"));
            }
            std::thread::sleep(Duration::from_millis(200));
            let rss = pids.iter().map(|&p| resident(p)).max().unwrap_or(0);
            report("idle", "rss", workers, rss as f64 / (1 << 20) as f64, "MiB");
        }
        Some("latency") => {
            let trips = number("--tasks").unwrap_or(5_000);
            let mut times: Vec<Duration> = (0..trips + trips / 10)
                .map(|_| {
                    let t = Instant::now();
                    pool.spawn(task.clone(), echo).join().expect("an echo");
                    t.elapsed()
                })
                .skip(trips / 10)
                .collect();
            times.sort_unstable();
            let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
            report(
                "latency",
                "p50",
                workers,
                pick(0.5).as_secs_f64() * 1e6,
                "us",
            );
            report(
                "latency",
                "p99",
                workers,
                pick(0.99).as_secs_f64() * 1e6,
                "us",
            );
        }
        _ => eprintln!(
            "usage: looppool-peer-procspawn throughput|latency|payload|startup|idle \
             [--workers N] [--tasks N]"
        ),
    }
    pool.shutdown();
}
