//! Trials of worker processes: killed workers, dropped pools and pools outliving their runtime,
//! names, signals and sockets, orphans, fork refusal, and nice values.

use super::*;
use looppool_core::{CallError, Error, Exit, SubmitError};

pub(super) async fn a_killed_worker_loses_its_tasks_with_the_signal_and_others_go_on<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    use nix::sys::signal::{kill, Signal};
    let pool = start(
        pool::<A>(m, 2)
            .concurrency(2)
            .result_credit(1)
            .respawn(false),
    )
    .await?;
    // Two tasks stuck on credit (nobody reads the outputs) are in flight on worker 0.
    let stuck = [
        pool.submit_to(0, Task::Hold)
            .await
            .map_err(|e| e.to_string())?,
        pool.submit_to(0, Task::Hold)
            .await
            .map_err(|e| e.to_string())?,
    ];
    let pid = pool.pid(0).ok_or("worker 0 has no pid")?;
    kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL).map_err(|e| e.to_string())?;
    for h in stuck {
        match h.await {
            Err(TaskError::Lost {
                worker: 0,
                exit: Exit::Signal(9),
                ..
            }) => {}
            other => return Err(format!("a task of the killed worker ended with {other:?}")),
        }
    }
    match pool.call_to(1, Task::Exit(3)).await {
        Err(CallError::Lost {
            worker: 1,
            exit: Exit::Code(3),
            ..
        }) => {}
        other => return Err(format!("a worker that exited with 3: {other:?}")),
    }
    let nobody = pool.try_submit(Task::Get);
    ensure!(
        matches!(nobody, Err(SubmitError::Unroutable(..))),
        "with every worker dead: {nobody:?}"
    );
    let stopped = within(&*A::runtime(), Duration::from_secs(10), "stop", pool.stop()).await?;
    ensure!(
        stopped.exits() == [Exit::Signal(9), Exit::Code(3)],
        "exits {:?}",
        stopped.exits()
    );
    Ok(())
}

pub(super) async fn dropping_a_pool_leaves_no_worker_process<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let pool = start(pool::<A>(m, 3)).await?;
    let pids: Vec<u32> = (0..3)
        .map(|k| pool.pid(k).ok_or(format!("worker {k} has no pid")))
        .collect::<Result<_, _>>()?;
    let handle = pool.submit(Task::Hold).await.map_err(|e| e.to_string())?;
    drop(pool);
    for pid in pids {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        ensure!(!alive, "worker process {pid} outlived its dropped pool");
    }
    let ended = futures_util::FutureExt::now_or_never(handle);
    ensure!(
        matches!(ended, Some(Err(TaskError::Lost { .. }))),
        "its task: {ended:?}"
    );
    Ok(())
}

pub(super) async fn clones_of_a_pool_share_its_workers_and_only_the_last_drop_kills_them<
    A: Adapter,
>(
    m: StartMethod,
) -> Outcome {
    fn shareable<T: Clone + Send + Sync + 'static>(_: &T) {}
    let pool = start(pool::<A>(m, 2)).await?;
    shareable(&pool);
    let pids: Vec<u32> = (0..2)
        .map(|k| pool.pid(k).ok_or(format!("worker {k} has no pid")))
        .collect::<Result<_, _>>()?;
    let clone = pool.clone();
    drop(pool);
    for &pid in &pids {
        ensure!(is_alive(pid), "worker {pid} died with a clone of its pool");
    }
    // The clone drives the same workers.
    for (k, &pid) in pids.iter().enumerate() {
        let out = clone
            .call_to(k, Task::Pid)
            .await
            .map_err(|e| e.to_string())?;
        ensure!(
            out == Out::Pid(pid),
            "worker {k} answered {out:?}, its pid was {pid}"
        );
    }
    let handle = clone.submit(Task::Hold).await.map_err(|e| e.to_string())?;
    drop(clone);
    for pid in pids {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok();
        ensure!(
            !alive,
            "worker process {pid} outlived the last clone of its pool"
        );
    }
    let ended = futures_util::FutureExt::now_or_never(handle);
    ensure!(
        matches!(ended, Some(Err(TaskError::Lost { .. }))),
        "its task: {ended:?}"
    );
    Ok(())
}

pub(super) async fn worker_processes_are_named_ignore_terminal_signals_and_hold_only_their_link<
    A: Adapter,
>(
    m: StartMethod,
) -> Outcome {
    use nix::sys::signal::{kill, Signal};
    let before = sockets("self")?;
    let pool = start(pool::<A>(m, 2)).await?;
    // The sockets the parent opened for the pool: its ends of the links.
    let links: Vec<String> = sockets("self")?
        .into_iter()
        .filter(|s| !before.contains(s))
        .collect();
    ensure!(
        links.len() >= 2,
        "the parent holds {} new sockets for 2 links",
        links.len()
    );
    for k in 0..2 {
        let pid = pool.pid(k).ok_or(format!("worker {k} has no pid"))?;
        let comm =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).map_err(|e| e.to_string())?;
        ensure!(
            comm.trim_end() == format!("lp{k}-conformance"),
            "worker {k} comm {comm:?}"
        );
        if m == StartMethod::ReExec {
            let cmdline =
                std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| e.to_string())?;
            let title = format!("looppool: conformance worker {k}\0");
            ensure!(
                cmdline.starts_with(title.as_bytes()),
                "worker {k} cmdline {:?}",
                String::from_utf8_lossy(&cmdline)
            );
        }
        let shared: Vec<String> = sockets(&pid.to_string())?
            .into_iter()
            .filter(|s| links.contains(s))
            .collect();
        ensure!(
            shared.is_empty(),
            "worker {k} holds the parent's link ends {shared:?}"
        );
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            kill(nix::unistd::Pid::from_raw(pid as i32), sig).map_err(|e| e.to_string())?;
        }
        let answer = pool
            .call_to(k, Task::WhoAmI)
            .await
            .map_err(|e| format!("after SIGINT and SIGTERM: {e}"))?;
        ensure!(answer == Out::Worker(k), "worker {k} answered {answer:?}");
        ensure!(pool.pid(k) == Some(pid), "worker {k} was replaced");
    }
    stop_gracefully(&pool).await
}

/// The sockets process `pid` ("self" for this one) has open, as `socket:[inode]`.
fn sockets(pid: &str) -> Result<Vec<String>, String> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.starts_with("socket:"))
        .collect())
}

/// The body of the parent process of [`workers_die_with_a_parent_that_is_killed`].
pub(in crate::conformance) async fn parent_until_killed<A: Adapter>(m: StartMethod) {
    let pool = start(pool::<A>(m, 3)).await.expect("the pool starts");
    let pids: Vec<String> = (0..3)
        .map(|k| pool.pid(k).expect("a live worker").to_string())
        .collect();
    println!("{}", pids.join(" "));
    std::future::pending::<()>().await;
}

pub(super) async fn workers_die_with_a_parent_that_is_killed<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    use futures_util::AsyncReadExt;
    use std::os::unix::net::UnixStream;
    let runtime = A::runtime();
    // The parent's stdout is a socket so it can be read without blocking this thread.
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut parent = std::process::Command::new(exe)
        .env(
            super::PARENT_VAR,
            format!("{}:{}", A::NAME, super::method_name(m)),
        )
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            theirs,
        )))
        .spawn()
        .map_err(|e| e.to_string())?;
    ours.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut io = runtime.wrap_unix(ours).map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let read_line = async {
        let mut byte = [0u8];
        while io.read(&mut byte).await.map_err(|e| e.to_string())? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        Ok::<_, String>(())
    };
    within(
        &*runtime,
        Duration::from_secs(30),
        "the parent's worker pids",
        read_line,
    )
    .await??;
    let pids: Vec<u32> = String::from_utf8_lossy(&line)
        .split_whitespace()
        .map(|p| p.parse().map_err(|_| format!("not a pid: {p:?}")))
        .collect::<Result<_, _>>()?;
    ensure!(
        pids.len() == 3 && pids.iter().all(|&p| is_alive(p)),
        "the parent reported {pids:?}"
    );
    parent.kill().map_err(|e| e.to_string())?;
    parent.wait().map_err(|e| e.to_string())?;
    // Wait for the workers to go: the kernel signals them when their parent dies.
    let gone = async {
        while pids.iter().any(|&p| is_alive(p)) {
            runtime.sleep(Duration::from_millis(5)).await;
        }
    };
    within(
        &*runtime,
        Duration::from_secs(5),
        "the orphaned workers to die",
        gone,
    )
    .await
}

pub(super) async fn fork_is_refused_while_the_process_has_threads<A: Adapter>(
    _: StartMethod,
) -> Outcome {
    let (stop, parked) = std::sync::mpsc::channel::<()>();
    let extra = std::thread::spawn(move || parked.recv());
    let started = pool::<A>(StartMethod::Fork, 1).start().await;
    drop(stop);
    let _ = extra.join();
    match started {
        Err(Error::ForkUnsafe { threads }) => {
            ensure!(threads >= 2, "refused with {threads} threads");
            Ok(())
        }
        other => Err(format!("expected fork to be refused, got {other:?}")),
    }
}

/// The nice value of process `pid`, from `/proc/<pid>/stat`.
fn nice_of(pid: u32) -> Result<i64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name (which may hold spaces): state is the 3rd, nice the 19th.
    let after = stat.rsplit_once(')').ok_or("no command name")?.1;
    after
        .split_whitespace()
        .nth(16)
        .and_then(|n| n.parse().ok())
        .ok_or(format!("no nice value in {stat:?}"))
}

pub(super) async fn workers_started_nice_run_at_that_priority<A: Adapter>(
    m: StartMethod,
) -> Outcome {
    let refused = pool::<A>(m, 1).worker_nice(25).start().await;
    ensure!(
        matches!(&refused, Err(Error::Config(why)) if why.contains("nice")),
        "a nice value of 25 was not refused: {:?}",
        refused.map(|_| ())
    );
    let own = nice_of(std::process::id())?;
    let seven = start(pool::<A>(m, 2).worker_nice(7)).await?;
    for w in 0..2 {
        let Out::Pid(pid) = seven
            .call_to(w, Task::Pid)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Err("not a pid".into());
        };
        let nice = nice_of(pid)?;
        ensure!(nice == 7, "worker {w} runs at nice {nice}, not 7");
    }
    ensure!(
        nice_of(std::process::id())? == own,
        "the parent's priority changed"
    );
    stop_gracefully(&seven).await?;
    // By default, workers run 10 below the parent; on request, at its priority.
    for (builder, expected, what) in [
        (pool::<A>(m, 1), (own + 10).min(19), "by default"),
        (
            pool::<A>(m, 1).worker_nice_as_parent(),
            own,
            "as the parent",
        ),
    ] {
        let started = start(builder).await?;
        let Out::Pid(pid) = started.call(Task::Pid).await.map_err(|e| e.to_string())? else {
            return Err("not a pid".into());
        };
        let nice = nice_of(pid)?;
        ensure!(
            nice == expected,
            "{what}, a worker runs at nice {nice}, not {expected}"
        );
        stop_gracefully(&started).await?;
    }
    Ok(())
}

/// A pool whose runtime shut down, dropping the tasks that held its links, writes to no
/// descriptor it no longer owns: sockets opened afterwards, on the freed numbers, receive
/// nothing from a call made then. (Where the pool's tasks outlive the runtime's thread, the
/// links stay open and the call reaches its worker as usual.)
pub(super) async fn a_pool_outliving_its_runtime_writes_to_no_socket_it_no_longer_owns<
    A: Adapter,
>(
    m: StartMethod,
) -> Outcome {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let started = std::thread::scope(|s| {
        s.spawn(|| A::block_on(start(pool::<A>(m, 1))))
            .join()
            .map_err(|_| "starting the pool on a thread of its own panicked".to_string())
    });
    let pool = started??;
    // Freed descriptor numbers go to new sockets, lowest first.
    let pairs = (0..32)
        .map(|_| UnixStream::pair())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    // A call places its task, and may write it, on its first poll.
    drop(futures_util::FutureExt::now_or_never(pool.call(Task::Get)));
    for (k, end) in pairs.iter().flat_map(|(a, b)| [a, b]).enumerate() {
        end.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        match (&*end).read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => {
                return Err(format!(
                    "socket {k}, opened after the pool's runtime shut down, was written to: \
                     {other:?}"
                ))
            }
        }
    }
    drop(pool);
    Ok(())
}
