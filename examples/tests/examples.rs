//! Runs each example as a user would, so that none can rot.

mod service;

use looppool_testkit::nats_server::{self, NatsServer};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The example binary `name`, which `cargo test` builds beside this test.
fn example(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("the test's own path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("examples").join(name)
}

/// Runs an example to completion, failing loudly if it takes longer than `limit`.
fn run(name: &str, args: &[&str], limit: Duration) -> Output {
    run_with(name, args, &[], limit)
}

/// [`run`] with these environment variables set.
fn run_with(name: &str, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let child = Command::new(example(name))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("the example's output"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("example {name} still running after {limit:?}");
        }
    }
}

fn quickstart_on(runtime: &str) {
    let out = run(
        "quickstart",
        &["--quick", "--runtime", runtime],
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains(&format!("parent and workers on {runtime}")),
        "{stdout}"
    );
    // 2262 primes lie below 20,000.
    let in_pool = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("worker ") && l.contains("2262 primes below 20000"))
        .count();
    let inline = stdout
        .lines()
        .filter(|l| l.contains("parent: 2262 primes below 20000"))
        .count();
    assert_eq!((in_pool, inline), (4, 4), "{stdout}");
    assert!(stdout.contains("pool stopped (graceful: true)"), "{stdout}");
}

#[test]
fn quickstart_runs_every_job_in_the_pool_then_inline_on_tokio() {
    quickstart_on("tokio");
}

#[test]
fn quickstart_runs_every_job_in_the_pool_then_inline_on_smol() {
    quickstart_on("smol");
}

#[test]
fn quickstart_runs_every_job_in_the_pool_then_inline_on_async_std() {
    quickstart_on("async-std");
}

#[test]
fn quickstart_stops_gracefully_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    // Jobs long enough to be running when the signal comes.
    let mut child = Command::new(example("quickstart"))
        .args(["--size", "2000000", "--jobs", "8"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the quickstart starts");
    let pid = child.id();
    let stdout = child.stdout.take().expect("its stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let limit = Duration::from_secs(120);
    let mut lines = Vec::new();
    let next = |lines: &mut Vec<String>| match rx.recv_timeout(limit) {
        Ok(line) => {
            lines.push(line.clone());
            Some(line)
        }
        Err(_) => None,
    };
    while let Some(line) = next(&mut lines) {
        if line.contains("jobs in the pool") {
            break;
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("jobs in the pool")),
        "{lines:?}"
    );
    let interrupted = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    assert!(interrupted.is_ok_and(|s| s.success()), "cannot send SIGINT");
    while next(&mut lines).is_some() {}
    let status = child.wait().expect("the quickstart ends");
    let all = lines.join("\n");
    assert!(status.success(), "exit {status:?}\n{all}");
    assert!(
        all.contains("interrupted: stopping the pool gracefully"),
        "{all}"
    );
    assert!(all.contains("pool stopped (graceful: true)"), "{all}");
    // Interrupted in the pool phase, it never reached the inline phase.
    assert!(!all.contains("inline on the parent's loop"), "{all}");
}

fn stdout_of(name: &str, args: &[&str]) -> String {
    let out = run(name, args, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name}: exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn fetch_reports_each_url_with_the_server_header_its_worker_got() {
    let stdout = stdout_of("fetch", &[]);
    let pages = [
        "python",
        "tornado",
        "google",
        "stackoverflow",
        "rust",
        "tokio",
        "smol",
        "looppool",
    ];
    for page in pages {
        let wanted = format!("/{page}, Some(\"looppool-demo-{page}\"))");
        let found = stdout
            .lines()
            .filter(|l| l.starts_with("worker ") && l.ends_with(&wanted))
            .count();
        assert_eq!(found, 1, "{page}:\n{stdout}");
    }
}

/// The finishing times of one of web's timelines: (fast, slow), in milliseconds.
fn timeline(stdout: &str, title: &str) -> (Vec<u64>, Vec<u64>) {
    let section = stdout
        .split(title)
        .nth(1)
        .expect("the section")
        .split("\n\n")
        .next()
        .unwrap_or("");
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    for line in section.lines().filter(|l| l.contains("done at")) {
        let ms: u64 = line
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .expect("a time");
        assert!(line.contains("(status 200)"), "{line}");
        if line.contains(": fast") {
            fast.push(ms);
        } else {
            slow.push(ms);
        }
    }
    assert_eq!((fast.len(), slow.len()), (20, 3), "{section}");
    (fast, slow)
}

#[test]
fn web_answers_fast_requests_while_the_pool_does_the_slow_ones() {
    let stdout = stdout_of("web", &["--n", "10000"]);
    let (fast, slow) = timeline(&stdout, "with the pool");
    assert!(
        fast.iter().max() < slow.iter().min(),
        "with the pool:\n{stdout}"
    );
    let (fast, slow) = timeline(&stdout, "without the pool");
    let first_slow = *slow.iter().min().expect("slow requests");
    assert!(
        fast.iter().any(|&t| t >= first_slow),
        "without the pool no fast request waited:\n{stdout}"
    );
}

#[test]
fn stateful_workers_answer_from_the_latest_table_and_a_replacement_gets_it() {
    let stdout = stdout_of("stateful", &["--quick"]);
    for version in 1..=3 {
        for worker in 0..3 {
            let wanted = format!(
                "refresh {version}: worker {worker} answered from table v{version}: 7 -> {}",
                49 + version
            );
            assert!(stdout.contains(&wanted), "missing {wanted:?}:\n{stdout}");
        }
    }
    assert!(
        stdout.contains("worker 1 (replaced) answered from table v2: 7 -> 51"),
        "{stdout}"
    );
}

#[test]
fn subscribe_delivers_every_unsolicited_tick_in_order_under_back_pressure() {
    let stdout = stdout_of("subscribe", &[]);
    let ticks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("tick ")).collect();
    assert_eq!(ticks.len(), 20, "{stdout}");
    for (n, line) in ticks.iter().enumerate() {
        assert!(line.starts_with(&format!("tick {n} (task None)")), "{line}");
    }
    assert!(
        ticks.iter().any(|l| l.ends_with("credit: true")),
        "the worker never waited for credit:\n{stdout}"
    );
}

/// The value of the series `name` for worker `worker` in a Prometheus scrape, if present.
fn series(scrape: &str, name: &str, worker: usize) -> Option<f64> {
    let labels = format!("{{pool=\"metrics-demo\",worker=\"{worker}\"}}");
    scrape.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(name)?.strip_prefix(&labels)?;
        rest.trim().parse().ok()
    })
}

#[test]
fn metrics_serves_a_scrape_with_per_worker_series() {
    let stdout = stdout_of("metrics", &[]);
    assert!(stdout.contains("HTTP 200"), "{stdout}");
    let mut ended = 0.0;
    for worker in 0..2 {
        let value = |name: &str| {
            series(&stdout, name, worker)
                .unwrap_or_else(|| panic!("no {name} for worker {worker} in\n{stdout}"))
        };
        assert!(value("looppool_worker_rss_bytes") > 1e6, "{stdout}");
        assert!(value("looppool_worker_peak_rss_bytes") >= value("looppool_worker_rss_bytes"));
        assert!(value("looppool_worker_cpu_ratio") >= 0.0);
        assert!(value("looppool_worker_loop_lag_seconds") >= 0.0);
        assert_eq!(value("looppool_worker_tasks_held"), 0.0, "{stdout}");
        assert_eq!(value("looppool_tasks_lost_total"), 0.0, "{stdout}");
        let count = value("looppool_task_latency_seconds_count");
        let done = value("looppool_tasks_completed_total") + value("looppool_tasks_failed_total");
        assert_eq!(count, done, "worker {worker}: {stdout}");
        ended += done;
    }
    // 40 jobs; those whose round count is a multiple of 7 (5 of them) fail.
    assert_eq!(ended, 40.0, "{stdout}");
    assert!(stdout.contains("40 jobs ran, 5 refused"), "{stdout}");
    assert!(stdout.contains("pool stopped (graceful: true)"), "{stdout}");
}

#[test]
fn top_draws_a_row_per_worker() {
    let stdout = stdout_of("top", &["--headless", "--frames", "2", "--workers", "3"]);
    assert!(
        stdout.contains("looppool top: pool \"top\", 3 workers"),
        "{stdout}"
    );
    for worker in 0..3 {
        let row = stdout
            .lines()
            .find(|l| l.trim_start_matches('│').starts_with(&format!("{worker} ")));
        let row = row.unwrap_or_else(|| panic!("no row for worker {worker}:\n{stdout}"));
        assert!(
            row.contains("MiB") && row.contains(" ms") && row.contains('%'),
            "{row}"
        );
    }
    assert!(stdout.contains("pool stopped (graceful: true)"), "{stdout}");
}

#[test]
fn nats_members_started_by_command_serve_the_parent() {
    // Every host of the pool is given its secret in the environment.
    const SECRET: &[(&str, &str)] = &[(looppool::nats::SECRET_VAR, "the example pool's secret")];
    // The server `LOOPPOOL_NATS_URL` names, else one of this test's own (on `PATH`, or
    // provisioned under `target/`), killed when the test ends.
    let own;
    let url = match std::env::var(nats_server::URL_VAR) {
        Ok(url) => url,
        Err(_) => {
            own = NatsServer::start().unwrap_or_else(|e| panic!("{e}"));
            own.url()
        }
    };
    let url = url.as_str();
    let members: Vec<_> = [("m1", "tokio"), ("m2", "smol")]
        .iter()
        .map(|(name, runtime)| {
            let args = [
                "member",
                url,
                "example",
                "--name",
                name,
                "--runtime",
                runtime,
                "--workers",
                "1",
            ];
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run_with("nats", &args, SECRET, Duration::from_secs(120))
            })
        })
        .collect();
    let parent = run_with(
        "nats",
        &["parent", url, "example", "--members", "2", "--jobs", "12"],
        SECRET,
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&parent.stdout);
    assert!(
        parent.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&parent.stderr)
    );
    // 12 jobs, round-robin over two members.
    assert!(
        stdout.contains("  m1: 6 jobs") && stdout.contains("  m2: 6 jobs"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pool stopped; 2 members left, 0 did not answer"),
        "{stdout}"
    );
    for m in members {
        let out = m.join().expect("the member's thread");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.contains("left after 6 tasks: the pool stopped"),
            "{text}"
        );
    }
}

/// Runs an example whose `main` calls `init` inside a running runtime and checks that every
/// call was answered by a worker process, not the parent.
fn init_inside_a_running_runtime(name: &str, runtime: &str) {
    let out = run(name, &[], Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    let answers: Vec<(u64, u64, u32, u32)> = stdout
        .lines()
        .filter_map(|l| {
            // "3 squared is 9 (worker process 123, parent 45)"
            let words: Vec<&str> = l
                .split(|c: char| !c.is_ascii_digit())
                .filter(|w| !w.is_empty())
                .collect();
            match words.as_slice() {
                [n, sq, worker, parent] if l.contains("squared") => Some((
                    n.parse().ok()?,
                    sq.parse().ok()?,
                    worker.parse().ok()?,
                    parent.parse().ok()?,
                )),
                _ => None,
            }
        })
        .collect();
    assert_eq!(answers.len(), 4, "{stdout}\n{stderr}");
    for (n, square, worker, parent) in answers {
        assert_eq!(square, n * n, "{stdout}");
        assert_ne!(worker, parent, "answered in the parent: {stdout}");
    }
    assert!(
        stdout.contains(&format!("{runtime}: pool stopped (graceful: true)")),
        "{stdout}"
    );
}

#[test]
fn init_works_as_the_first_line_of_main_under_tokio_main() {
    init_inside_a_running_runtime("tokio_main", "tokio");
}

#[test]
fn init_works_as_the_first_line_of_main_under_async_std_main() {
    init_inside_a_running_runtime("async_std_main", "async-std");
}

#[test]
fn init_works_as_the_first_line_of_a_future_smol_blocks_on() {
    init_inside_a_running_runtime("smol_main", "smol");
}

/// Runs a program that uses the runtime-neutral library (and, on tokio, a worker of another
/// crate), all registered: its `main` calls `init(&[])` and names no worker type.
fn library_on(name: &str, runtime: &str, squares: bool) {
    let stdout = stdout_of(name, &[]);
    let parent_and_worker = |line: &str| -> Option<(u32, u32)> {
        let worker = line.split("worker process ").nth(1)?.split(',').next()?;
        let parent = line.split("parent ").nth(1)?.trim_end_matches(')');
        Some((worker.parse().ok()?, parent.parse().ok()?))
    };
    let checksum = stdout
        .lines()
        .find(|l| l.starts_with("checksum of looppool is 4cea3f552c9e47a9"))
        .unwrap_or_else(|| panic!("no checksum:\n{stdout}"));
    let (worker, parent) = parent_and_worker(checksum).expect("its pids");
    assert_ne!(worker, parent, "computed in the parent: {stdout}");
    assert!(
        stdout.contains(&format!("{runtime}: library pool stopped (graceful: true)")),
        "{stdout}"
    );
    if squares {
        let answered = stdout
            .lines()
            .filter(|l| {
                l.contains(" squared is ") && parent_and_worker(l).is_some_and(|(w, p)| w != p)
            })
            .count();
        assert_eq!(answered, 4, "{stdout}");
    }
}

#[test]
fn a_runtime_neutral_librarys_worker_runs_on_tokio_registered_across_two_crates() {
    library_on("library_tokio", "tokio", true);
}

#[test]
fn a_runtime_neutral_librarys_worker_runs_on_smol() {
    library_on("library_smol", "smol", false);
}
