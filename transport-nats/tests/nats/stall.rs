//! A parent cut off from the broker, as a partition or a stalled process does: the parent runs
//! in a process of its own (this program, with `LOOPPOOL_NATS_TEST_PARENT` set), which the
//! trial stops (SIGSTOP) and continues (SIGCONT).
//!
//! The parent process starts its pool, then submits a task every 100 ms and prints each
//! result (`ok N` or `err N: why`) and each member event (`joined M`, `left M: why`), until a
//! line `stop` on its standard input; it then stops the pool and prints `stopped`, the members
//! that left and those that did not answer.

use super::{check, quick, shared_url, Failed, Spec};
use looppool_nats::{MemberEvent, Pool};
use looppool_testkit::conformance::{Probe, Task};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(super) const PARENT_VAR: &str = "LOOPPOOL_NATS_TEST_PARENT";

pub(super) fn parent_main() -> ! {
    let url = std::env::var("LOOPPOOL_NATS_TEST_URL").expect("the server's URL");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let line = line.unwrap_or_default();
            let stop = line.is_empty() || line == "stop";
            if line_tx.send(line).is_err() || stop {
                break;
            }
        }
    });
    let code = rt.block_on(async move {
        let pool = match quick(Pool::<Probe>::builder(&url, "stall")).start().await {
            Ok(pool) => pool,
            Err(e) => {
                println!("cannot start: {e}");
                return 3;
            }
        };
        let pool = std::sync::Arc::new(pool);
        let mut events = pool.events();
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                line = lines.recv() => match line.as_deref() {
                    Some("long") => {
                        // A task under way through the stall, awaited on its own.
                        match pool.submit(Task::Sleep(2000)).await {
                            Ok(handle) => {
                                println!("long sent");
                                tokio::spawn(async move {
                                    match handle.await {
                                        Ok(()) => println!("long ok"),
                                        Err(e) => println!("long err: {e}"),
                                    }
                                });
                            }
                            Err(e) => println!("long err: {e}"),
                        }
                    }
                    _ => break,
                },
                Some(event) = events.recv() => match event {
                    MemberEvent::Joined(m) => println!("joined {}", m.name),
                    MemberEvent::Left { member, reason } => println!("left {member}: {reason}"),
                    _ => {}
                },
                _ = tick.tick() => {
                    n += 1;
                    let answer = tokio::time::timeout(Duration::from_secs(1), async {
                        pool.submit(Task::Double(n)).await?.await?;
                        Ok::<_, Box<dyn std::error::Error>>(())
                    });
                    match answer.await {
                        Ok(Ok(())) => println!("ok {n}"),
                        Ok(Err(e)) => println!("err {n}: {e}"),
                        Err(_) => println!("err {n}: no answer within 1 s"),
                    }
                    // Outputs are not the point here.
                    while pool.outputs().try_recv().is_some() {}
                }
            }
        }
        let stopped = pool.stop().await;
        println!(
            "stopped left={:?} unresponsive={:?}",
            stopped.left, stopped.unresponsive
        );
        0
    });
    std::process::exit(code)
}

/// The parent process and the lines it printed.
struct Parent {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Parent {
    fn spawn(url: &str) -> Result<Self, Failed> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(PARENT_VAR, "1")
            .env("LOOPPOOL_NATS_TEST_URL", url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits for a line `matches` accepts, printed from now on; fails after `within`.
    async fn expect(
        &mut self,
        what: &str,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<String, Failed> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line =
                tokio::task::block_in_place(|| self.lines.recv_timeout(left)).map_err(|_| {
                    format!(
                        "{what}: not within {within:?}; the parent printed {:?}",
                        self.tail()
                    )
                })?;
            self.seen.push(line.clone());
            if matches(&line) {
                return Ok(line);
            }
        }
    }

    /// The last lines seen.
    fn tail(&self) -> Vec<String> {
        self.seen.iter().rev().take(12).rev().cloned().collect()
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ok N` lines, the numbers of the tasks that ended well.
fn ok(line: &str) -> Option<u64> {
    line.strip_prefix("ok ")?.parse().ok()
}

pub(super) async fn stalled_parent() -> Result<(), Failed> {
    use nix::sys::signal::Signal::{SIGCONT, SIGSTOP};
    let url = shared_url()?;
    let member = Spec::new(&url, "stall").spawn("m");
    let mut parent = Parent::spawn(&url)?;
    parent
        .expect("the member joins", Duration::from_secs(30), |l| {
            l == "joined m"
        })
        .await?;
    parent
        .expect("tasks end", Duration::from_secs(10), |l| ok(l).is_some())
        .await?;

    // A stall shorter than the member timeout (1.5 s) changes nothing.
    parent.signal(SIGSTOP);
    tokio::time::sleep(Duration::from_millis(700)).await;
    parent.signal(SIGCONT);
    let resumed = parent.seen.len();
    let mut oks = 0;
    while oks < 10 {
        let line = parent
            .expect("tasks after a short stall", Duration::from_secs(10), |l| {
                ok(l).is_some() || l.starts_with("left ")
            })
            .await?;
        check(ok(&line).is_some(), || {
            format!(
                "after a 0.7 s stall: {line} ({:?})",
                &parent.seen[resumed..]
            )
        })?;
        oks += 1;
    }

    // A stall past the member timeout: the member loses the parent and stops its work; the
    // parent counts it gone; once the parent is back, the member joins again and tasks end,
    // the one under way through the stall too: the member it waits for is the one it left.
    writeln!(parent.stdin, "long")?;
    parent
        .expect("the long task is sent", Duration::from_secs(10), |l| {
            l == "long sent" || l.starts_with("long err")
        })
        .await?;
    let sent = parent.seen.len();
    parent.signal(SIGSTOP);
    tokio::time::sleep(Duration::from_secs(3)).await;
    parent.signal(SIGCONT);
    parent
        .expect("the member joins again", Duration::from_secs(20), |l| {
            l == "joined m"
        })
        .await?;
    let back = Instant::now();
    parent
        .expect("tasks end again", Duration::from_secs(10), |l| {
            ok(l).is_some()
        })
        .await?;
    check(back.elapsed() < Duration::from_secs(5), || {
        format!("the first task ended {:?} after the rejoin", back.elapsed())
    })?;
    let seen = parent.seen[sent..].iter().find(|l| l.starts_with("long "));
    let long = match seen.cloned() {
        Some(line) => line,
        None => {
            parent
                .expect("the long task ends", Duration::from_secs(20), |l| {
                    l.starts_with("long ")
                })
                .await?
        }
    };
    check(long == "long ok", || {
        format!("the task under way through the stall: {long}")
    })?;

    writeln!(parent.stdin, "stop")?;
    let stopped = parent
        .expect("the pool stops", Duration::from_secs(30), |l| {
            l.starts_with("stopped")
        })
        .await?;
    check(stopped == r#"stopped left=["m"] unresponsive=[]"#, || {
        stopped.clone()
    })?;
    let (code, text) = member.exit(Duration::from_secs(10)).await?;
    check(code == 0 && text.contains("the pool stopped"), || {
        format!("the member exited {code}: {text}")
    })?;
    Ok(())
}
