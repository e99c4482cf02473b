//! An axum service that offloads CPU-heavy hashing to the pool, as a tokio service would.
//!
//! - `GET /hash?rounds=N[&deadline_ms=D]` hashes for `N` rounds in a worker process and answers
//!   with the digest. The request has a deadline (`D`, default 10 s), counted from its arrival,
//!   waiting for a free worker included: past it the call is dropped, which cancels its task in
//!   the worker, and the answer is 504. A client that disconnects cancels its task the same way,
//!   since axum drops the handler's future and with it the pool's `call`. Too many rounds is the
//!   worker's own typed error, answered with 413 and the task id.
//! - `GET /fast` answers at once from the server's loop, whatever the workers do.
//! - `GET /workers` lists each worker's pid and how many tasks it holds.
//! - Ctrl-C (SIGINT) stops accepting, lets requests in flight finish, then stops the pool.
//!
//! `init` is the first line of a `#[tokio::main]` main, and the pool, a cheap clonable handle,
//! is the router's state.
//!
//! ```text
//! cargo run --release --example service -- --addr 127.0.0.1:3000
//! curl 'http://127.0.0.1:3000/hash?rounds=100000000'
//! ```

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use looppool::{async_trait, BoxError, CallError, Context, Pool, Worker};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The most rounds one request may ask for.
const ROUND_LIMIT: u64 = 1 << 40;

/// One hashing job.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    rounds: u64,
}

/// How a job fails, as the handler sees it: the worker's own error type.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
enum HashError {
    #[error("{asked} rounds asked, at most {limit} allowed")]
    TooManyRounds { asked: u64, limit: u64 },
}

/// The worker: hashes on its own event loop, yielding between chunks, so that a cancelled job
/// is dropped at once.
struct Hasher;

#[async_trait(?Send)]
impl Worker for Hasher {
    type Task = Job;
    type Output = u64;
    type Error = HashError;

    async fn init(_ctx: &Context<u64>) -> Result<Self, BoxError> {
        Ok(Hasher)
    }

    async fn process(&self, job: Job, ctx: &Context<u64>) -> Result<(), HashError> {
        if job.rounds > ROUND_LIMIT {
            return Err(HashError::TooManyRounds {
                asked: job.rounds,
                limit: ROUND_LIMIT,
            });
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut done = 0;
        while done < job.rounds {
            let chunk = (job.rounds - done).min(1 << 20);
            for i in 0..chunk {
                h = (h ^ (done + i)).wrapping_mul(0x0100_0000_01b3);
            }
            done += chunk;
            // A cancellation takes effect here.
            tokio::task::yield_now().await;
        }
        // The only way this fails is a closed link: the pool is gone and nobody will read it.
        let _ = ctx.put(h).await;
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct HashQuery {
    rounds: u64,
    deadline_ms: Option<u64>,
}

async fn hash(
    State(pool): State<Pool<Hasher>>,
    Query(q): Query<HashQuery>,
) -> (StatusCode, String) {
    let deadline = Duration::from_millis(q.deadline_ms.unwrap_or(10_000));
    // The whole request's deadline: `call_timeout` would not count the wait for a free worker.
    let Ok(answer) = tokio::time::timeout(deadline, pool.call(Job { rounds: q.rounds })).await
    else {
        return (
            StatusCode::GATEWAY_TIMEOUT,
            format!("no answer within {deadline:?}\n"),
        );
    };
    match answer {
        Ok(digest) => (StatusCode::OK, format!("{digest:016x}\n")),
        Err(CallError::Failed { error, task }) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("task {task}: {error}\n"),
        ),
        Err(CallError::TimedOut { task, after }) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("task {task}: no answer within {after:?}\n"),
        ),
        Err(e @ (CallError::Full | CallError::Closed)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn workers(State(pool): State<Pool<Hasher>>) -> String {
    let mut lines = String::new();
    for w in pool.stats().workers {
        let pid = w.pid.unwrap_or(0);
        lines.push_str(&format!("worker {} pid {pid} held {}\n", w.worker, w.held));
    }
    lines
}

fn argument(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).cloned()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    looppool::init(&[looppool::worker::<Hasher>()]);
    let addr = argument("--addr").unwrap_or_else(|| "127.0.0.1:3000".into());
    // CPU-bound jobs: one at a time per worker process, as many processes as CPUs.
    let mut builder = looppool::builder::<Hasher>().name("service").concurrency(1);
    if let Some(n) = argument("--workers") {
        builder = builder.workers(n.parse()?);
    }
    let pool = builder.start().await?;
    let app = Router::new()
        .route("/hash", get(hash))
        .route("/fast", get(|| async { "fast\n" }))
        .route("/workers", get(workers))
        .with_state(pool.clone());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            println!("stopping: finishing the requests in flight");
        })
        .await?;
    let stopped = pool.stop().await;
    println!(
        "stopped {}",
        if stopped.is_graceful() {
            "gracefully"
        } else {
            "with workers killed"
        }
    );
    Ok(())
}
