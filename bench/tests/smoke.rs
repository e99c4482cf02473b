//! Runs the benchmark binary at a small scale, as a user would, so that no scenario can rot;
//! and kills workers under the soak to check that nothing is lost. The figures themselves are
//! not checked here: speed targets live in the benchmark's output, not in timed tests.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BENCH: &str = env!("CARGO_BIN_EXE_looppool-bench");

/// Runs the benchmark to completion with `args`, failing loudly after `limit`.
fn run(args: &[&str], limit: Duration) -> (i32, String, String) {
    let child = Command::new(BENCH)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the benchmark starts");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.expect("its output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("looppool-bench {args:?} still running after {limit:?}");
        }
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The text of `"key":value` in a JSON line of the benchmark's flat format.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 3;
    let rest = &line[start..];
    let end = rest.find([',', '}']).expect("a value ends");
    rest[..end].trim_matches('"')
}

#[test]
fn every_scenario_prints_a_json_line_beside_its_floor() {
    let (code, stdout, stderr) = run(
        &["all", "--scale", "0.01", "--json"],
        Duration::from_secs(300),
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let names: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (field(l, "scenario"), field(l, "metric")))
        .collect();
    assert_eq!(
        names,
        [
            ("throughput", "rate"),
            ("throughput", "rate vs batched"),
            ("latency", "p50"),
            ("latency", "p50 one CPU"),
            ("latency", "p99"),
            ("latency", "p99 one CPU"),
            ("latency", "p50 one CPU from a task"),
            ("latency", "p99 one CPU from a task"),
            ("payload", "bandwidth"),
            ("startup", "8 workers"),
            ("startup", "respawn"),
            ("idle", "rss"),
            ("offload", "fast p99"),
            ("offload", "fast p99 as parent"),
            ("offload", "inline p99"),
            ("offload", "mixed p99 least-loaded"),
            ("offload", "mixed p99 round-robin"),
        ],
        "{stdout}"
    );
    for line in &lines {
        assert_eq!(field(line, "runtime"), "tokio", "{line}");
        let value: f64 = field(line, "value").parse().expect("a number");
        assert!(value > 0.0, "{line}");
        if field(line, "metric") == "respawn" {
            assert_eq!(field(line, "floor"), "null", "{line}");
            continue;
        }
        let floor: f64 = field(line, "floor").parse().expect("a floor");
        let ratio: f64 = field(line, "ratio").parse().expect("a ratio");
        assert!(floor > 0.0, "{line}");
        assert!(
            (ratio - value / floor).abs() <= 0.001 + ratio * 1e-3,
            "{line}"
        );
    }
}

#[test]
fn the_other_runtimes_run_the_scenarios_too() {
    for runtime in ["smol", "async-std"] {
        let (code, stdout, stderr) = run(
            &["latency", "--runtime", runtime, "--scale", "0.01"],
            Duration::from_secs(120),
        );
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        assert_eq!(stdout.lines().count(), 6, "{stdout}");
        assert!(stdout.lines().all(|l| l.contains(runtime)), "{stdout}");
    }
}

#[test]
fn bad_arguments_are_refused_with_a_clear_message() {
    let (code, _, stderr) = run(&["throughput", "--workers", "0"], Duration::from_secs(30));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--workers needs a positive number"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&["sideways"], Duration::from_secs(30));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("unknown scenario \"sideways\""), "{stderr}");
    let (code, _, stderr) = run(&["offload", "--runtime", "smol"], Duration::from_secs(30));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("offload runs on tokio only"), "{stderr}");
}

#[test]
fn the_soak_loses_nothing_when_its_workers_are_killed_from_outside() {
    let mut child = Command::new(BENCH)
        .args(["soak", "--seconds", "6"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("the soak starts");
    let stdout = child.stdout.take().expect("its stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut next = || {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no more output after {lines:?}"));
        lines.push(line.clone());
        line
    };
    // The first progress line names the workers' pids: kill both, one after the other.
    let pids = loop {
        let line = next();
        if let Some(list) = line.split("pids [").nth(1) {
            let pids: Vec<u32> = list
                .trim_end_matches(']')
                .split(", ")
                .filter_map(|p| {
                    p.strip_prefix("Some(")?
                        .strip_suffix(')')?
                        .parse::<u32>()
                        .ok()
                })
                .collect();
            // Some may be between incarnations: the soak kills and recycles workers itself.
            if !pids.is_empty() {
                break pids;
            }
        }
        assert!(!line.contains("tasks ended"), "no worker pid in {lines:?}");
    };
    for pid in &pids {
        // It may be gone already, recycled or killed by the soak itself.
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let last = loop {
        let line = next();
        if line.contains("tasks ended") {
            break line;
        }
    };
    let status = child.wait().expect("the soak ends");
    assert!(status.success(), "exit {status:?}: {last}");
    for expected in [
        ", 0 lost,",
        "0 worker numbers given up",
        "stop graceful: true",
    ] {
        assert!(last.contains(expected), "{last}");
    }
}
