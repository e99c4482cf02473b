//! The throughput and latency scenarios of looppool-bench on a `procspawn::Pool`, printing
//! looppool-bench's JSON lines (no floor: compare with the floor looppool-bench prints on the
//! same machine).
//!
//! `cargo run --release -- throughput|latency [--workers N] [--tasks N]`

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
            let started = Instant::now();
            let mut in_flight = VecDeque::new();
            for _ in 0..tasks {
                if in_flight.len() == WINDOW {
                    let handle: procspawn::JoinHandle<ByteBuf> = in_flight.pop_front().unwrap();
                    handle.join().expect("an echo");
                }
                in_flight.push_back(pool.spawn(task.clone(), echo));
            }
            for handle in in_flight {
                handle.join().expect("an echo");
            }
            let rate = tasks as f64 / started.elapsed().as_secs_f64();
            report("throughput", "rate", workers, rate, "tasks/s");
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
            report("latency", "p50", workers, pick(0.5).as_secs_f64() * 1e6, "us");
            report("latency", "p99", workers, pick(0.99).as_secs_f64() * 1e6, "us");
        }
        _ => eprintln!("usage: looppool-peer-procspawn throughput|latency [--workers N] [--tasks N]"),
    }
    pool.shutdown();
}
