//! The throughput and latency scenarios of looppool-bench on a `procspawn::Pool`, printing
//! looppool-bench's JSON lines (no floor: compare with the floor looppool-bench prints on the
//! same machine).
//!
//! `cargo run --release -- throughput|latency|payload|startup|idle|offload [--workers N]
//! [--tasks N]`

use serde_bytes::ByteBuf;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The CPU work of one slow request (as looppool-bench's offload).
const SLOW: Duration = Duration::from_millis(20);

fn spin(_: ()) {
    let until = Instant::now() + SLOW;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// A blocking HTTP/1.1 server, a thread per connection (procspawn has no event-loop
/// integration, so this is how a program would use it): `/fast` answers at once, `/slow` waits
/// for `spin` in the pool, `/slow-inline` spins in the connection's thread.
fn serve(listener: TcpListener, pool: Arc<procspawn::Pool>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let pool = pool.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut stream = stream;
            loop {
                let mut head = String::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => head.push_str(&line),
                    }
                }
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let body = match path.as_str() {
                    "/slow" => {
                        pool.spawn((), spin).join().expect("the slow work");
                        "slow"
                    }
                    "/slow-inline" => {
                        spin(());
                        "slow"
                    }
                    _ => "fast",
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
}

/// GETs `path` on a kept-alive connection and reads the 4-byte answer.
fn get(conn: &mut (TcpStream, BufReader<TcpStream>), path: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    conn.0.write_all(request.as_bytes()).expect("send");
    let mut line = String::new();
    loop {
        line.clear();
        conn.1.read_line(&mut line).expect("read");
        if line == "\r\n" {
            break;
        }
    }
    let mut body = [0u8; 4];
    conn.1.read_exact(&mut body).expect("body");
}

fn connect(port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let reader = BufReader::new(stream.try_clone().expect("clone"));
    (stream, reader)
}

/// The p99 of `n` sequential fast requests while `clients` threads keep requesting `load`.
fn fast_p99(port: u16, n: usize, load: Option<(&'static str, usize)>) -> Duration {
    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = load
        .map(|(path, clients)| {
            (0..clients)
                .map(|_| {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        let mut conn = connect(port);
                        while !stop.load(Ordering::Relaxed) {
                            get(&mut conn, path);
                        }
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if load.is_some() {
        std::thread::sleep(SLOW * 2);
    }
    let mut conn = connect(port);
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            get(&mut conn, "/fast");
            let took = t.elapsed();
            std::thread::sleep(Duration::from_micros(500));
            took
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    for loader in loaders {
        loader.join().expect("a loader");
    }
    times.sort_unstable();
    times[((times.len() - 1) as f64 * 0.99).round() as usize]
}

const WINDOW: usize = 256;

fn report(scenario: &str, metric: &str, workers: usize, value: f64, unit: &str) {
    report_with_floor(scenario, metric, workers, value, unit, None);
}

fn report_with_floor(
    scenario: &str,
    metric: &str,
    workers: usize,
    value: f64,
    unit: &str,
    floor: Option<f64>,
) {
    let (floor, ratio) = match floor {
        Some(f) => (format!("{f:.3}"), format!("{:.3}", value / f)),
        None => ("null".into(), "null".into()),
    };
    println!(
        "{{\"scenario\":\"{scenario}\",\"metric\":\"{metric}\",\"runtime\":\"procspawn-1\",\"workers\":{workers},\"value\":{value:.3},\"unit\":\"{unit}\",\"floor\":{floor},\"ratio\":{ratio}}}"
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
        Some("offload") => {
            let requests = number("--tasks").unwrap_or(2000);
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = listener.local_addr().expect("an address").port();
            let shared = Arc::new(procspawn::Pool::new(workers).expect("a procspawn pool"));
            let server_pool = shared.clone();
            std::thread::spawn(move || serve(listener, server_pool));
            let clients = 2 * workers;
            let unloaded = fast_p99(port, requests, None);
            let pooled = fast_p99(port, requests, Some(("/slow", clients)));
            let inline = fast_p99(
                port,
                (requests / 20).max(10),
                Some(("/slow-inline", clients)),
            );
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            report_with_floor(
                "offload",
                "fast p99",
                workers,
                us(pooled),
                "us",
                Some(us(unloaded)),
            );
            report_with_floor(
                "offload",
                "inline p99",
                workers,
                us(inline),
                "us",
                Some(us(unloaded)),
            );
        }
        _ => eprintln!(
            "usage: looppool-peer-procspawn throughput|latency|payload|startup|idle|offload \
             [--workers N] [--tasks N]"
        ),
    }
    pool.shutdown();
}
