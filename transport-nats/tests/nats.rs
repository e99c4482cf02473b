//! The pool's behaviours over NATS JetStream, with members as real processes.
//!
//! The trials share the server named by `LOOPPOOL_NATS_URL`, or one this program starts; the
//! broker-restart trials start their own. Servers this program starts are `nats-server` from
//! `PATH`, or a copy provisioned once under `target/` (see `looppool_testkit::nats_server`).
//!
//! This program is also the member: run with `LOOPPOOL_NATS_TEST_MEMBER` set, it joins the
//! pool its environment names and serves the testkit's probe worker until told to leave.

use libtest_mimic::{Arguments, Failed, Trial};
use looppool_core::{Entry, Runtime, StartMethod};
use looppool_nats::{Member, MemberEvent, Pool, Refusal, SubmitError, TaskError};
use looppool_testkit::conformance::{Out, Probe, ProbeError, Task};
use looppool_testkit::nats_server::{self, NatsServer};
use members::{MemberProc, Spec};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "nats/broker.rs"]
mod broker;
#[path = "nats/cancel.rs"]
mod cancel;
#[path = "nats/faults.rs"]
mod faults;
#[path = "nats/forge.rs"]
mod forge;
#[path = "nats/members.rs"]
mod members;
#[path = "nats/parents.rs"]
mod parents;
#[path = "nats/permissions.rs"]
mod permissions;
#[path = "nats/reclaim.rs"]
mod reclaim;
#[path = "nats/routing.rs"]
mod routing;
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
            routing::round_robin,
        ),
        trial(
            "targeted_broadcast_and_sticky_broadcast_reach_the_right_members",
            routing::routing,
        ),
        trial(
            "a_call_answers_with_its_tasks_first_output_and_the_cores_errors",
            routing::calls,
        ),
        trial(
            "cancelled_tasks_end_at_once_and_their_members_drop_them",
            cancel::cancellation,
        ),
        trial(
            "a_cancelled_task_of_a_dead_member_is_dropped_not_moved",
            cancel::cancelled_task_of_a_dead_member,
        ),
        trial(
            "try_submit_returns_at_once_and_stores_in_order",
            routing::try_submit_in_order,
        ),
        trial(
            "task_credit_is_the_consumers_max_ack_pending",
            routing::task_credit,
        ),
        trial(
            "result_credit_holds_a_member_back_until_outputs_are_read",
            routing::result_credit,
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
            permissions::member_permissions,
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
        trial(
            "tasks_waiting_for_a_member_are_lost_a_member_timeout_after_none_came",
            reclaim::waiting_tasks_expire,
        ),
        trial(
            "a_stopped_pool_ends_at_once_the_tasks_waiting_for_a_member",
            reclaim::stop_ends_waiting_tasks,
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
