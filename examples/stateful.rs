//! Stateful workers: each holds a lookup table that the parent computes once and broadcasts,
//! instead of every worker computing it (or keeping its own database connection). The parent
//! refreshes the table every few seconds. The broadcast is sticky: a worker that dies and is
//! replaced gets the latest table before its first task. Tasks sent to a chosen worker show
//! targeting.
//!
//! ```text
//! cargo run --example stateful              # a refresh every 2 s
//! cargo run --example stateful -- --quick   # every 100 ms
//! ```

use looppool::{async_trait, BoxError, CallError, Context, Failure, Worker};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::time::Duration;

/// The table: `values[key]` for each key, and the version it was computed at.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Table {
    version: u32,
    values: Vec<u64>,
}

impl Table {
    /// What the parent computes once per refresh (a stand-in for an expensive query).
    fn compute(version: u32) -> Table {
        let values = (0..1_000u64).map(|k| k * k + u64::from(version)).collect();
        Table { version, values }
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Task {
    /// Replace the worker's table.
    Load(Table),
    /// Look a key up.
    Lookup(usize),
}

/// An answer: who looked the key up, in which version of the table, and what it found.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    worker: usize,
    version: u32,
    key: usize,
    value: u64,
}

struct TableWorker {
    table: RefCell<Option<Table>>,
}

#[async_trait(?Send)]
impl Worker for TableWorker {
    type Task = Task;
    type Output = Answer;
    type Error = Failure;

    async fn init(_ctx: &Context<Answer>) -> Result<Self, BoxError> {
        Ok(TableWorker {
            table: RefCell::new(None),
        })
    }

    async fn process(&self, task: Task, ctx: &Context<Answer>) -> Result<(), Failure> {
        match task {
            Task::Load(table) => *self.table.borrow_mut() = Some(table),
            Task::Lookup(key) => {
                let answer = {
                    let table = self.table.borrow();
                    let table = table
                        .as_ref()
                        .ok_or_else(|| Failure::msg("no table loaded yet"))?;
                    let value = *table
                        .values
                        .get(key)
                        .ok_or_else(|| Failure::msg("no such key"))?;
                    Answer {
                        worker: ctx.worker(),
                        version: table.version,
                        key,
                        value,
                    }
                };
                ctx.put(answer).await?;
            }
        }
        Ok(())
    }
}

async fn run(refresh: Duration) -> Result<(), BoxError> {
    let workers = 3;
    let pool = looppool::builder::<TableWorker>()
        .name("stateful")
        .workers(workers)
        .start()
        .await?;
    for version in 1..=3 {
        let table = Table::compute(version);
        // Sticky: remembered under "table" and replayed to any replacement worker.
        for handle in pool.broadcast_sticky("table", Task::Load(table)).await? {
            handle.await?;
        }
        for worker in 0..workers {
            // Targeted: ask each worker in turn.
            let a = pool.call_to(worker, Task::Lookup(7)).await?;
            println!(
                "refresh {version}: worker {} answered from table v{}: {} -> {}",
                a.worker, a.version, a.key, a.value
            );
        }
        if version == 2 {
            pool.kill_worker(1);
            println!("killed worker 1");
            // Until the pool has noticed the death, a task may still reach the dying worker.
            let a = loop {
                match pool.call_to(1, Task::Lookup(7)).await {
                    Err(CallError::Lost { .. }) => continue,
                    other => break other?,
                }
            };
            println!(
                "worker {} (replaced) answered from table v{}: {} -> {}",
                a.worker, a.version, a.key, a.value
            );
        }
        tokio::time::sleep(refresh).await;
    }
    pool.stop().await;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    looppool::init(&[looppool::worker::<TableWorker>()]);
    let quick = std::env::args().any(|a| a == "--quick");
    let refresh = Duration::from_millis(if quick { 100 } else { 2_000 });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(refresh))
}
