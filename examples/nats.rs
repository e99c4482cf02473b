//! Scale-out: one parent, members on any number of hosts, meeting at a NATS server with
//! JetStream. The same worker runs in every member's local pool of processes.
//!
//! ```text
//! # the server (Debian's package): see transport-nats/scripts/nats-server.sh
//! nats-server -a 0.0.0.0 -p 4222 -js -sd /var/tmp/nats
//!
//! # the pool's secret, the same on every host (messages not sealed with it are refused)
//! export LOOPPOOL_NATS_SECRET=$(openssl rand -hex 32)
//!
//! # on each host: a member, joining pool "demo" with 4 worker processes
//! cargo run --release --example nats -- member nats://10.0.0.5:4222 demo --workers 4
//! cargo run --release --example nats -- member nats://10.0.0.5:4222 demo --runtime smol
//!
//! # anywhere: the parent, which waits for 2 members and runs 40 jobs
//! cargo run --release --example nats -- parent nats://10.0.0.5:4222 demo --members 2 --jobs 40
//! ```
//!
//! A member leaves on Ctrl-C or SIGTERM after finishing what its workers run; the tasks waiting
//! for it go to the other members. Kill one with SIGKILL and its tasks come back after the ack
//! wait, on another member. When the parent stops the pool, every member leaves and exits.

use looppool::nats::{Member, MemberEvent, Pool};
use looppool::{async_trait, BoxError, Context, Entry, Failure, Runtime, Worker};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest Collatz chain that starts below a limit: a stand-in for CPU-heavy work.
struct Collatz;

/// A job's answer: the limit, the start with the longest chain, that chain's length.
type Answer = (u64, u64, u32);

fn longest_chain(limit: u64) -> (u64, u32) {
    let mut best = (1, 1);
    for start in 1..limit {
        let (mut n, mut steps) = (start, 1u32);
        while n != 1 {
            n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
            steps += 1;
        }
        if steps > best.1 {
            best = (start, steps);
        }
    }
    best
}

#[async_trait(?Send)]
impl Worker for Collatz {
    type Task = u64;
    type Output = Answer;
    type Error = Failure;

    // The parent and the members must agree on the worker's name.
    fn name() -> &'static str {
        "looppool-examples/collatz"
    }

    async fn init(_ctx: &Context<Answer>) -> Result<Self, BoxError> {
        Ok(Collatz)
    }

    async fn process(&self, limit: u64, ctx: &Context<Answer>) -> Result<(), Failure> {
        let (start, steps) = longest_chain(limit);
        ctx.put((limit, start, steps)).await?;
        Ok(())
    }
}

const RUNTIME_VAR: &str = "LOOPPOOL_EXAMPLE_RUNTIME";

/// The runtime of this process's workers, chosen with `--runtime` (and inherited by the worker
/// processes through the environment).
fn worker_runtime() -> Arc<dyn Runtime> {
    match std::env::var(RUNTIME_VAR).as_deref() {
        Ok("smol") => looppool::rt::smol::runtime(),
        Ok("async-std") => looppool::rt::async_std::runtime(),
        _ => looppool::runtime(),
    }
}

struct Args {
    role: String,
    server: String,
    pool: String,
    options: BTreeMap<String, String>,
}

impl Args {
    fn parse() -> Result<Self, BoxError> {
        let mut args = std::env::args().skip(1);
        let usage = "usage: nats (member|parent) SERVER POOL [--workers N] [--runtime \
                     tokio|smol|async-std] [--name NAME] [--members N] [--jobs N]";
        let (Some(role), Some(server), Some(pool)) = (args.next(), args.next(), args.next()) else {
            return Err(usage.into());
        };
        let mut options = BTreeMap::new();
        while let Some(key) = args.next() {
            let key = key.strip_prefix("--").ok_or(usage)?.to_string();
            let value = args.next().ok_or(usage)?;
            options.insert(key, value);
        }
        Ok(Self {
            role,
            server,
            pool,
            options,
        })
    }

    fn number(&self, key: &str, default: usize) -> Result<usize, BoxError> {
        match self.options.get(key) {
            Some(v) => Ok(v.parse().map_err(|_| format!("--{key} takes a number"))?),
            None => Ok(default),
        }
    }
}

fn main() -> Result<(), BoxError> {
    looppool::init(&[Entry::new::<Collatz>(worker_runtime)]);
    let args = Args::parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.role.as_str() {
        "member" => rt.block_on(member(args)),
        "parent" => rt.block_on(parent(args)),
        other => Err(format!("unknown role {other:?}: member or parent").into()),
    }
}

async fn member(args: Args) -> Result<(), BoxError> {
    let runtime = args.options.get("runtime").map_or("tokio", String::as_str);
    if !["tokio", "smol", "async-std"].contains(&runtime) {
        return Err(format!("unknown runtime {runtime:?}").into());
    }
    std::env::set_var(RUNTIME_VAR, runtime);
    let local = looppool::builder::<Collatz>()
        .workers(args.number("workers", 2)?)
        .worker_runtime(worker_runtime());
    let mut member = Member::new(&args.server, &args.pool, local);
    if let Some(name) = args.options.get("name") {
        member = member.name(name);
    }
    println!(
        "joining pool {} at {} (workers on {runtime})",
        args.pool, args.server
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let left = member.run_until(shutdown).await?;
    println!(
        "member {} left after {} tasks: {}",
        left.member, left.tasks, left.reason
    );
    Ok(())
}

async fn parent(args: Args) -> Result<(), BoxError> {
    let want = args.number("members", 1)?;
    let jobs = args.number("jobs", 20)?;
    let pool = Pool::<Collatz>::builder(&args.server, &args.pool)
        .ack_wait(Duration::from_secs(10))
        .start()
        .await?;
    println!("pool {} started; waiting for {want} members", args.pool);
    let members = pool.wait_for_members(want, Duration::from_secs(60)).await?;
    let mut events = pool.events();
    for m in &members {
        println!(
            "  member {} on {} (pid {}): {} workers, capacity {}",
            m.name, m.host, m.pid, m.workers, m.capacity
        );
    }
    let started = Instant::now();
    let outputs = pool.outputs();
    let limits: Vec<u64> = (0..jobs as u64).map(|k| 200_000 + 10_000 * k).collect();
    let submit = async {
        let mut handles = Vec::new();
        for &limit in &limits {
            handles.push(pool.submit(limit).await?);
        }
        let mut per_member: BTreeMap<String, usize> = BTreeMap::new();
        let mut redelivered = 0;
        for mut h in handles {
            (&mut h).await?;
            *per_member
                .entry(h.member().unwrap_or_default())
                .or_default() += 1;
            if h.attempts() > 1 {
                redelivered += 1;
            }
        }
        Ok::<_, BoxError>((per_member, redelivered))
    };
    let receive = async {
        let mut longest = (0, 0, 0);
        for _ in 0..limits.len() {
            let Some(d) = outputs.recv().await else { break };
            let answer = d.into_value();
            if answer.2 > longest.2 {
                longest = answer;
            }
        }
        longest
    };
    let watch = async {
        while let Some(event) = events.recv().await {
            match event {
                MemberEvent::Joined(m) => println!("  member {} joined", m.name),
                MemberEvent::Left { member, reason } => {
                    println!("  member {member} left: {reason}")
                }
                _ => {}
            }
        }
    };
    let (done, longest) = tokio::select! {
        r = async { tokio::join!(submit, receive) } => r,
        () = watch => unreachable!("events last as long as the pool"),
    };
    let (per_member, redelivered) = done?;
    println!(
        "{jobs} jobs in {:.2?}; longest chain below {}: {} steps, from {}",
        started.elapsed(),
        longest.0,
        longest.2,
        longest.1
    );
    for (member, n) in &per_member {
        println!("  {member}: {n} jobs");
    }
    if redelivered > 0 {
        println!("  {redelivered} jobs were redelivered after their member died");
    }
    let stopped = pool.stop().await;
    println!(
        "pool stopped; {} members left, {} did not answer",
        stopped.left.len(),
        stopped.unresponsive.len()
    );
    Ok(())
}
