//! The pool's behaviours over NATS JetStream, with members as real processes.
//!
//! The trials share the server named by `LOOPPOOL_NATS_URL`, or one this program starts; the
//! broker-restart trials start their own. Servers this program starts are `nats-server` from
//! `PATH`, or a copy provisioned once under `target/` (see `looppool_testkit::nats_server`).
//!
//! This program is also the member: run with `LOOPPOOL_NATS_TEST_MEMBER` set, it joins the
//! pool its environment names and serves the testkit's probe worker until told to leave.

use futures_util::future::join_all;
use libtest_mimic::{Arguments, Failed, Trial};
use looppool_core::{Entry, Runtime, StartMethod};
use looppool_nats::{Member, MemberEvent, Pool, SubmitError, TaskError};
use looppool_testkit::conformance::{Out, Probe, Task};
use looppool_testkit::nats_server::{self, NatsServer};
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "nats/broker.rs"]
mod broker;
#[path = "nats/faults.rs"]
mod faults;
#[path = "nats/forge.rs"]
mod forge;
#[path = "nats/parents.rs"]
mod parents;
#[path = "nats/reclaim.rs"]
mod reclaim;
#[path = "nats/security.rs"]
mod security;
#[path = "nats/stall.rs"]
mod stall;

const MEMBER_VAR: &str = "LOOPPOOL_NATS_TEST_MEMBER";
/// The pool secret of the trials' parents and members.
const SECRET: &str = "the trials' pool secret";
const RUNTIME_VAR: &str = "LOOPPOOL_NATS_TEST_RUNTIME";

/// The runtime this process's workers run, from the environment (inherited by re-executed
/// workers).
fn worker_runtime() -> Arc<dyn Runtime> {
    match std::env::var(RUNTIME_VAR).as_deref() {
        Ok("smol") => looppool_smol::runtime(),
        Ok("async-std") => looppool_async_std::runtime(),
        _ => looppool_tokio::runtime(),
    }
}

fn main() {
    looppool_core::init(&[Entry::new::<Probe>(worker_runtime)]);
    if std::env::var_os(stall::PARENT_VAR).is_some() {
        stall::parent_main();
    }
    if std::env::var_os(MEMBER_VAR).is_none() {
        // Members read it from their environment; the trials' parents are given it.
        std::env::set_var(looppool_nats::SECRET_VAR, SECRET);
    }
    if std::env::var_os(MEMBER_VAR).is_some() {
        member_main();
    }
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let trials = vec![
        trial(
            "members_join_and_round_robin_spreads_tasks_evenly",
            round_robin,
        ),
        trial(
            "targeted_broadcast_and_sticky_broadcast_reach_the_right_members",
            routing,
        ),
        trial("task_credit_is_the_consumers_max_ack_pending", task_credit),
        trial(
            "result_credit_holds_a_member_back_until_outputs_are_read",
            result_credit,
        ),
        trial(
            "failures_panics_and_dead_worker_processes_resolve_once",
            faults::failures,
        ),
        trial(
            "bad_tasks_are_refused_with_a_clear_error",
            faults::bad_tasks,
        ),
        trial(
            "graceful_stop_drains_and_refuses_new_tasks",
            faults::graceful_stop,
        ),
        trial("a_sigkilled_member_loses_nothing", faults::sigkilled_member),
        trial(
            "a_member_told_to_shut_down_hands_its_waiting_tasks_on",
            faults::member_shutdown,
        ),
        trial(
            "an_output_or_error_too_large_for_the_broker_fails_its_task_clearly",
            faults::oversized_output,
        ),
        trial(
            "members_leave_when_the_parent_goes_silent",
            faults::silent_parent,
        ),
        trial(
            "a_duplicate_name_waits_and_a_restarted_member_takes_its_place",
            faults::duplicate_name,
        ),
        trial(
            "smol_and_async_std_workers_serve_over_nats",
            faults::other_runtimes,
        ),
        trial(
            "credentials_reach_a_server_that_requires_them",
            broker::credentials,
        ),
        trial("a_broker_restart_is_survived", broker::broker_restart),
        trial(
            "a_broker_gone_for_good_ends_submissions_handles_stop_and_members",
            broker::broker_gone,
        ),
        trial(
            "a_broker_that_lost_its_store_fails_tasks_under_way_and_recovers",
            broker::store_lost,
        ),
        trial(
            "the_pools_streams_are_bounded_and_its_consumers_expire",
            broker::bounded_streams,
        ),
        trial(
            "forged_and_replayed_messages_are_refused",
            security::forged_messages,
        ),
        trial(
            "a_member_without_the_pool_secret_is_told_so",
            security::no_secret,
        ),
        trial(
            "a_member_cannot_act_in_another_members_name",
            security::member_permissions,
        ),
        trial(
            "a_second_parent_is_refused_until_the_first_is_gone",
            parents::second_parent,
        ),
        trial(
            "a_parent_that_lost_its_lease_ends_its_tasks_and_touches_nothing",
            parents::lease_lost,
        ),
        trial(
            "a_stalled_parent_keeps_its_members_or_gets_them_back",
            stall::stalled_parent,
        ),
        trial(
            "a_task_that_kills_its_members_is_dead_lettered",
            reclaim::poison_task,
        ),
        trial(
            "a_dead_members_undelivered_tasks_move_at_once_within_backlogs",
            reclaim::undelivered_move_at_once,
        ),
        trial(
            "tasks_a_leaving_member_hands_back_unstarted_count_no_delivery",
            reclaim::handed_back,
        ),
    ];
    let conclusion = libtest_mimic::run(&args, trials);
    nats_server::stop_shared();
    conclusion.exit();
}

fn trial<F, Fut>(name: &'static str, f: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Failed>>,
{
    Trial::test(name, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async {
            match tokio::time::timeout(Duration::from_secs(120), f()).await {
                Ok(r) => r,
                Err(_) => Err(format!("{name} did not finish within 120 s").into()),
            }
        })
    })
}

// ---- the member process ----

fn member_main() -> ! {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set"));
    let url = var("LOOPPOOL_NATS_TEST_URL");
    let pool = var("LOOPPOOL_NATS_TEST_POOL");
    let name = var("LOOPPOOL_NATS_TEST_NAME");
    let workers: usize = var("LOOPPOOL_NATS_TEST_WORKERS").parse().expect("a number");
    let capacity: usize = var("LOOPPOOL_NATS_TEST_CAPACITY")
        .parse()
        .expect("a number");
    let credentials = std::env::var("LOOPPOOL_NATS_TEST_USER")
        .ok()
        .zip(std::env::var("LOOPPOOL_NATS_TEST_PASSWORD").ok());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = rt.block_on(async {
        let local = looppool_core::Pool::<Probe>::builder(looppool_tokio::runtime())
            .workers(workers)
            .capacity(capacity)
            .concurrency(1)
            .start_method(match std::env::var("LOOPPOOL_NATS_TEST_START").as_deref() {
                // Workers as threads: a task that exits kills the whole member.
                Ok("thread") => StartMethod::Thread,
                _ => StartMethod::ReExec,
            })
            .worker_runtime(worker_runtime());
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let mut member = Member::new(url, pool, local).name(name);
        if let Ok(ms) = std::env::var("LOOPPOOL_NATS_TEST_WAIT_PARENT") {
            let ms = ms.parse().expect("milliseconds");
            member = member.wait_for_parent(Duration::from_millis(ms));
        }
        if let Some((user, password)) = credentials {
            member = member.connect_options(
                looppool_nats::async_nats::ConnectOptions::with_user_and_password(user, password),
            );
        }
        member
            .run_until(async move {
                term.recv().await;
            })
            .await
    });
    match result {
        Ok(left) => {
            println!(
                "left after {} tasks ({} messages resent, {} messages refused): {}",
                left.tasks, left.resent, left.refused, left.reason
            );
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("member error: {e}");
            std::process::exit(3)
        }
    }
}

// ---- the broker ----

/// The server the trials share.
fn shared_url() -> Result<String, Failed> {
    Ok(nats_server::shared_url()?)
}

// ---- members ----

/// A member process; killed if still running when dropped.
struct MemberProc {
    name: String,
    child: Child,
}

#[derive(Clone)]
struct Spec<'a> {
    url: &'a str,
    pool: &'a str,
    workers: usize,
    capacity: usize,
    runtime: &'a str,
    credentials: Option<(&'a str, &'a str)>,
    /// The pool secret in the member's environment.
    secret: Option<&'a str>,
    /// How the member starts its workers: `reexec`, or `thread`.
    start: &'a str,
    /// How long the member waits for its parent to take it in (default: as long as it takes).
    wait_for_parent: Option<Duration>,
}

impl<'a> Spec<'a> {
    fn new(url: &'a str, pool: &'a str) -> Self {
        Self {
            url,
            pool,
            workers: 1,
            capacity: 2,
            runtime: "tokio",
            credentials: None,
            secret: Some(SECRET),
            start: "reexec",
            wait_for_parent: None,
        }
    }

    fn spawn(&self, name: &str) -> MemberProc {
        let mut command = Command::new(std::env::current_exe().expect("this program"));
        if let Some((user, password)) = self.credentials {
            command
                .env("LOOPPOOL_NATS_TEST_USER", user)
                .env("LOOPPOOL_NATS_TEST_PASSWORD", password);
        }
        if let Some(wait) = self.wait_for_parent {
            command.env(
                "LOOPPOOL_NATS_TEST_WAIT_PARENT",
                wait.as_millis().to_string(),
            );
        }
        match self.secret {
            Some(secret) => command.env(looppool_nats::SECRET_VAR, secret),
            None => command.env_remove(looppool_nats::SECRET_VAR),
        };
        let child = command
            .env(MEMBER_VAR, "1")
            .env("LOOPPOOL_NATS_TEST_URL", self.url)
            .env("LOOPPOOL_NATS_TEST_POOL", self.pool)
            .env("LOOPPOOL_NATS_TEST_NAME", name)
            .env("LOOPPOOL_NATS_TEST_WORKERS", self.workers.to_string())
            .env("LOOPPOOL_NATS_TEST_CAPACITY", self.capacity.to_string())
            .env("LOOPPOOL_NATS_TEST_START", self.start)
            .env(RUNTIME_VAR, self.runtime)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a member");
        MemberProc {
            name: name.into(),
            child,
        }
    }
}

impl MemberProc {
    /// Whether the process still runs, and if not, how it ended and what it printed.
    fn state(&mut self) -> String {
        match self.child.try_wait() {
            Ok(None) => format!("{} runs", self.name),
            Ok(Some(status)) => {
                use std::io::Read;
                let mut text = String::new();
                for out in [
                    self.child
                        .stdout
                        .take()
                        .map(|o| Box::new(o) as Box<dyn Read>),
                    self.child
                        .stderr
                        .take()
                        .map(|e| Box::new(e) as Box<dyn Read>),
                ]
                .into_iter()
                .flatten()
                {
                    let mut out = out;
                    let _ = out.read_to_string(&mut text);
                }
                format!("{} ended ({status}): {text}", self.name)
            }
            Err(e) => format!("{}: {e}", self.name),
        }
    }

    /// Waits for the process to exit; its exit code and what it printed.
    async fn exit(mut self, within: Duration) -> Result<(i32, String), Failed> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                use std::io::Read;
                let mut text = String::new();
                if let Some(mut out) = self.child.stdout.take() {
                    out.read_to_string(&mut text)?;
                }
                if let Some(mut err) = self.child.stderr.take() {
                    err.read_to_string(&mut text)?;
                }
                return Ok((status.code().unwrap_or(-1), text));
            }
            if Instant::now() > deadline {
                return Err(format!("member {} still runs after {within:?}", self.name).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Asks the member to shut down (SIGTERM).
    fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
}

impl Drop for MemberProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    if ok {
        Ok(())
    } else {
        Err(what().into())
    }
}

async fn start(url: &str, pool: &str) -> Result<Pool<Probe>, Failed> {
    Ok(quick(Pool::builder(url, pool)).start().await?)
}

/// Short heartbeats and timeouts, so faults show within a trial.
fn quick(b: looppool_nats::Builder<Probe>) -> looppool_nats::Builder<Probe> {
    b.secret(looppool_nats::Secret::new(SECRET).expect("long enough"))
        .heartbeat(Duration::from_millis(100))
        .member_timeout(Duration::from_millis(1500))
        .ack_wait(Duration::from_secs(2))
}

/// Stops the pool and checks every member left when told and its process ended cleanly.
async fn stop_all(pool: &Pool<Probe>, members: Vec<MemberProc>) -> Result<(), Failed> {
    let stopped = pool.stop().await;
    check(stopped.unresponsive.is_empty(), || {
        format!("members did not leave: {:?}", stopped.unresponsive)
    })?;
    for m in members {
        let name = m.name.clone();
        let (code, text) = m.exit(Duration::from_secs(10)).await?;
        check(code == 0 && text.contains("the pool stopped"), || {
            format!("member {name} exited {code}: {text}")
        })?;
    }
    Ok(())
}

fn doubled(d: &looppool_nats::Delivery<Out>) -> Option<u64> {
    match d.value() {
        Out::Doubled(n) => Some(*n),
        _ => None,
    }
}

// ---- the trials ----

async fn round_robin() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = start(&url, "rr").await?;
    let mut events = pool.events();
    let spec = Spec::new(&url, "rr");
    let members: Vec<MemberProc> = ["a", "b", "c"].iter().map(|n| spec.spawn(n)).collect();
    pool.wait_for_members(3, Duration::from_secs(30)).await?;
    let mut joined = Vec::new();
    while joined.len() < 3 {
        if let Some(MemberEvent::Joined(info)) = events.recv().await {
            joined.push(info.name);
        }
    }
    joined.sort();
    check(joined == ["a", "b", "c"], || format!("joined: {joined:?}"))?;

    let outputs = pool.outputs();
    let mut handles = Vec::new();
    for n in 0..30u64 {
        handles.push(pool.submit(Task::Double(n)).await?);
    }
    let mut per_member = std::collections::BTreeMap::new();
    for h in handles.iter_mut() {
        (&mut *h).await?;
        check(h.deliveries() == 1, || {
            format!("deliveries {}", h.deliveries())
        })?;
        *per_member.entry(h.member()).or_insert(0) += 1;
    }
    check(per_member.values().all(|&k| k == 10), || {
        format!("round-robin gave {per_member:?}")
    })?;
    let mut values = Vec::new();
    for _ in 0..30 {
        let d = outputs.recv().await.ok_or("outputs ended")?;
        let id = d.task_id().ok_or("an output without its task")?;
        let h = handles
            .iter()
            .find(|h| h.id() == id)
            .ok_or("unknown task")?;
        check(d.member() == h.member(), || {
            "output from another member".into()
        })?;
        values.push(doubled(&d).ok_or("not Doubled")?);
    }
    values.sort_unstable();
    check(values == (0..30).map(|n| n * 2).collect::<Vec<_>>(), || {
        format!("outputs: {values:?}")
    })?;
    stop_all(&pool, members).await
}

async fn routing() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = start(&url, "routing").await?;
    let spec = Spec::new(&url, "routing");
    let members = vec![spec.spawn("a"), spec.spawn("b")];
    pool.wait_for_members(2, Duration::from_secs(30)).await?;
    let outputs = pool.outputs();

    // Targeted tasks stay on their member; a broadcast follows what each was sent before.
    pool.submit_to("a", Task::Set(11)).await?.await?;
    let set_b = pool.submit_to("b", Task::Set(22)).await?;
    let handles = pool.broadcast(Task::Get).await?;
    set_b.await?;
    check(handles.len() == 2, || {
        format!("{} broadcast handles", handles.len())
    })?;
    for h in join_all(handles).await {
        h?;
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = outputs.recv().await.ok_or("outputs ended")?;
        if let Out::Value { value, .. } = d.value() {
            seen.push((d.member().to_string(), *value));
        }
    }
    seen.sort();
    check(seen == [("a".into(), 11), ("b".into(), 22)], || {
        format!("broadcast Get saw {seen:?}")
    })?;

    // A sticky broadcast reaches a member that joins later, before its first task.
    for h in pool.broadcast_sticky("config", Task::Set(7)).await? {
        h.await?;
    }
    let late = spec.spawn("late");
    pool.wait_for_members(3, Duration::from_secs(30)).await?;
    pool.submit_to("late", Task::Get).await?.await?;
    let d = outputs.recv().await.ok_or("outputs ended")?;
    check(
        d.member() == "late" && matches!(d.value(), Out::Value { value: 7, .. }),
        || format!("the late member saw {:?} from {}", d.value(), d.member()),
    )?;
    drop(d);
    match pool.submit_to("nobody", Task::Get).await {
        Err(SubmitError::UnknownMember(_, m)) if m == "nobody" => {}
        other => return Err(format!("a task for an unknown member: {other:?}").into()),
    }
    let mut members = members;
    members.push(late);
    stop_all(&pool, members).await
}

/// A limit on waiting for something to happen, failing loudly when it passes.
struct Deadline {
    what: &'static str,
    at: Instant,
    within: Duration,
}

impl Deadline {
    fn new(what: &'static str, within: Duration) -> Self {
        Self {
            what,
            at: Instant::now() + within,
            within,
        }
    }

    /// Waits a little before looking again; fails once the deadline passed.
    async fn tick(&self) -> Result<(), Failed> {
        if Instant::now() > self.at {
            return Err(format!("{}: not within {:?}", self.what, self.within).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

async fn js(url: &str) -> Result<async_nats::jetstream::Context, Failed> {
    let client = async_nats::connect(url).await?;
    Ok(async_nats::jetstream::new(client))
}

async fn task_credit() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = quick(Pool::builder(&url, "credit"))
        .backlog(6)
        .start()
        .await?;
    let spec = Spec::new(&url, "credit");
    let members = vec![spec.spawn("m")];
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let gate = std::env::temp_dir().join(format!("looppool-nats-gate-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    let gate_s = gate.to_string_lossy().to_string();
    let mut handles = Vec::new();
    for _ in 0..6 {
        handles.push(pool.submit(Task::SpinUntilExists(gate_s.clone())).await?);
    }
    match pool.try_submit(Task::Double(1)).await {
        Err(SubmitError::Full(_)) => {}
        other => return Err(format!("a 7th task past a backlog of 6: {other:?}").into()),
    }
    // The member's consumer holds exactly its capacity (1 worker x capacity 2); the rest wait
    // in the stream.
    let js = js(&url).await?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("m", "looppool-credit-tasks")
        .await?;
    let wait = Deadline::new("2 delivered, 4 waiting", Duration::from_secs(10));
    let (ack_pending, pending) = loop {
        let info = consumer.info().await?;
        let got = (info.num_ack_pending, info.num_pending);
        if got == (2, 4) {
            break got;
        }
        wait.tick().await?;
    };
    let max = consumer.cached_info().config.max_ack_pending;
    check(max == 2 && ack_pending == 2 && pending == 4, || {
        format!("max_ack_pending {max}, ack pending {ack_pending}, pending {pending}")
    })?;
    check(pool.outstanding("m") == Some(6), || "outstanding".into())?;
    std::fs::write(&gate, b"go")?;
    for h in handles {
        h.await?;
    }
    std::fs::remove_file(&gate)?;
    stop_all(&pool, members).await
}

async fn result_credit() -> Result<(), Failed> {
    let url = shared_url()?;
    let pool = quick(Pool::builder(&url, "results"))
        .result_credit(2)
        .start()
        .await?;
    // Two workers: the second runs a task while the first waits for credit.
    let spec = Spec {
        workers: 2,
        ..Spec::new(&url, "results")
    };
    let members = vec![spec.spawn("m")];
    pool.wait_for_members(1, Duration::from_secs(30)).await?;
    let outputs = pool.outputs();
    let mut handle = pool.submit(Task::Emit(10)).await?;
    // Unread, the member has sent its whole credit and waits.
    let wait = Deadline::new("2 outputs received", Duration::from_secs(10));
    while outputs.len() != 2 {
        wait.tick().await?;
    }
    // Another task's end does not wait behind the outputs held back: a program may wait for
    // it before it reads on.
    let other = pool.submit(Task::Sleep(10)).await?;
    tokio::time::timeout(Duration::from_secs(10), other)
        .await
        .map_err(|_| "another task's end waited behind unread outputs")??;
    let first = outputs.recv().await.ok_or("outputs ended")?;
    check(pool.outstanding("m") == Some(1), || {
        "the task ended early".into()
    })?;
    let mut values = vec![first.into_value()];
    while values.len() < 10 {
        let waiting = outputs.len();
        check(waiting <= 2, || {
            format!("{waiting} outputs received, credit 2")
        })?;
        values.push(outputs.recv().await.ok_or("outputs ended")?.into_value());
    }
    (&mut handle).await?;
    let want: Vec<Out> = (0..10).map(Out::Seq).collect();
    check(values == want, || format!("outputs {values:?}"))?;
    let stopped = pool.stop().await;
    check(stopped.left == ["m"], || format!("{stopped:?}"))?;
    for m in members {
        let (code, text) = m.exit(Duration::from_secs(10)).await?;
        check(code == 0 && text.contains("0 messages refused)"), || {
            format!("member exited {code}: {text}")
        })?;
    }
    Ok(())
}
