//! The axum example as its users would meet it: a disconnected client's task stops in its
//! worker, a deadline answers 504, the worker's typed error 413, and Ctrl-C stops it gracefully.

use super::example;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example server, killed if the test fails before it stopped.
struct Server {
    child: Child,
    addr: SocketAddr,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(example("service"))
            .args(["--addr", "127.0.0.1:0", "--workers", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the service example starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("its stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("its first line");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("an address");
        Server {
            child,
            addr,
            stdout,
        }
    }

    /// Sends `GET path` and returns the status and body; the read fails loudly after `limit`.
    fn get(&self, path: &str, limit: Duration) -> (u16, String) {
        let mut stream = self.send(path);
        stream.set_read_timeout(Some(limit)).expect("a timeout");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("GET {path}: no whole answer within {limit:?}: {e}"));
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("GET {path}: {answer:?}"));
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    /// Sends `GET path` and returns the connection without reading the answer.
    fn send(&self, path: &str) -> TcpStream {
        let mut stream = TcpStream::connect(self.addr).expect("a connection");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .expect("a request");
        stream
    }

    /// The worker's pid and the tasks it holds, from `/workers`.
    fn worker(&self) -> (u32, usize) {
        let (status, body) = self.get("/workers", Duration::from_secs(10));
        assert_eq!(status, 200, "{body}");
        let words: Vec<&str> = body.split_whitespace().collect();
        match words.as_slice() {
            ["worker", "0", "pid", pid, "held", held] => {
                (pid.parse().expect("a pid"), held.parse().expect("a count"))
            }
            _ => panic!("unexpected /workers answer {body:?}"),
        }
    }

    /// Polls `/workers` until the worker holds `held` tasks; fails loudly after 10 s.
    fn until_held(&self, held: usize) {
        let start = Instant::now();
        while self.worker().1 != held {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the worker never held {held} tasks"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn the_axum_service_cancels_a_disconnected_clients_task_in_its_worker() {
    let server = Server::start();
    let (pid, _) = server.worker();
    // Hours of hashing for a debug build; the client goes away once it has started.
    let client = server.send("/hash?rounds=1000000000000&deadline_ms=600000");
    server.until_held(1);
    drop(client);
    // One worker running one job at a time: a short job answers only once the abandoned one
    // was dropped in the worker. Were it still hashing, this would wait for its deadline.
    let (status, body) = server.get("/hash?rounds=1000", Duration::from_secs(10));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim().len(), 16, "a digest: {body:?}");
    // Dropped by the worker itself, not killed for ignoring the cancellation.
    assert_eq!(
        server.worker(),
        (pid, 0),
        "the worker was replaced or holds tasks"
    );
}

#[test]
fn the_axum_service_answers_deadlines_and_typed_errors_and_stops_on_ctrl_c() {
    let mut server = Server::start();
    let (pid, _) = server.worker();
    let (status, body) = server.get(
        "/hash?rounds=1000000000000&deadline_ms=200",
        Duration::from_secs(10),
    );
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("no answer within 200ms"), "{body}");
    // The deadline counts the wait for a free worker: with the only one busy, a second request
    // still answers at its deadline.
    let busy = server.send("/hash?rounds=1000000000000&deadline_ms=3000");
    server.until_held(1);
    let queued = Instant::now();
    let (status, body) = server.get("/hash?rounds=1000&deadline_ms=300", Duration::from_secs(10));
    assert_eq!(status, 504, "{body}");
    assert!(
        queued.elapsed() < Duration::from_secs(2),
        "{:?}",
        queued.elapsed()
    );
    drop(busy);
    server.until_held(0);
    let (status, body) = server.get("/hash?rounds=100000000000000", Duration::from_secs(10));
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("at most 1099511627776 allowed"), "{body}");
    let (status, body) = server.get("/fast", Duration::from_secs(10));
    assert_eq!((status, body.trim()), (200, "fast"));
    assert_eq!(
        server.worker(),
        (pid, 0),
        "the worker was replaced or holds tasks"
    );
    // Ctrl-C: a request in flight (here, until its deadline, well after the signal) is answered,
    // then the pool stops gracefully.
    let in_flight = server.send("/hash?rounds=1000000000000&deadline_ms=5000");
    server.until_held(1);
    let signalled = Instant::now();
    let pid = server.child.id();
    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let mut answer = String::new();
    let mut in_flight = in_flight;
    in_flight
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a timeout");
    in_flight
        .read_to_string(&mut answer)
        .expect("the request in flight is answered");
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "answered {:?} after the signal: the request did not run to its deadline",
        signalled.elapsed()
    );
    // Its exit first (the pipe ends only once every process holding it is gone), then its output.
    let start = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().expect("its status") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still running 30 s after the signal"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    server
        .stdout
        .read_to_string(&mut rest)
        .expect("the rest of its output");
    assert!(status.success(), "exit {status:?}: {rest}");
    assert!(rest.contains("stopped gracefully"), "{rest}");
}
