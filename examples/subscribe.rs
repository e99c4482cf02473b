//! A worker that emits outputs with no task: Python Looppool's "subscribe to something by input
//! message and put results later". One task asks a worker to subscribe; the worker starts a
//! periodic source on its own loop and emits each tick as an unsolicited output. The parent
//! reads them from the output stream, slowly, and the result credit holds the worker back:
//! it cannot run ahead of the consumer by more than its credit.
//!
//! ```text
//! cargo run --example subscribe
//! ```

use looppool::{async_trait, BoxError, Context, Failure, Worker};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Debug, Serialize, Deserialize)]
enum Out {
    /// The subscription started.
    Subscribed,
    /// One tick of the source: its number, and whether the worker had to wait for credit.
    Tick { n: u32, waited_for_credit: bool },
}

struct Ticker;

#[async_trait(?Send)]
impl Worker for Ticker {
    /// Subscribe to this many ticks.
    type Task = u32;
    type Output = Out;
    type Error = Failure;

    async fn init(_ctx: &Context<Out>) -> Result<Self, BoxError> {
        Ok(Ticker)
    }

    async fn process(&self, ticks: u32, ctx: &Context<Out>) -> Result<(), Failure> {
        // Outputs from this context carry no task: the subscription outlives the task.
        let source = ctx.unsolicited();
        tokio::task::spawn_local(async move {
            for n in 0..ticks {
                // The periodic source: a tick every 10 ms, faster than the parent consumes.
                source.sleep(Duration::from_millis(10)).await;
                let waited_for_credit = source.credit() == 0;
                // Waits while the parent holds `result_credit` unacknowledged ticks.
                if source
                    .put(Out::Tick {
                        n,
                        waited_for_credit,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        ctx.put(Out::Subscribed).await?;
        Ok(())
    }
}

async fn run() -> Result<(), BoxError> {
    let credit = 2;
    let pool = looppool::builder::<Ticker>()
        .name("subscribe")
        .workers(1)
        .result_credit(credit)
        .start()
        .await?;
    let outputs = pool.outputs();
    let answer = pool.call(20).await?;
    println!("{answer:?}");
    let start = Instant::now();
    let mut held = Vec::new();
    for _ in 0..20 {
        let Some(tick) = outputs.recv().await else {
            break;
        };
        if let Out::Tick {
            n,
            waited_for_credit,
        } = *tick
        {
            println!(
                "tick {n} (task {:?}) at {:>4} ms; the worker waited for credit: {waited_for_credit}",
                tick.task_id(),
                start.elapsed().as_millis()
            );
        }
        // A slow consumer: it holds `credit` ticks, then takes a while before acknowledging.
        held.push(tick);
        if held.len() == credit {
            tokio::time::sleep(Duration::from_millis(30)).await;
            held.clear();
        }
    }
    pool.stop().await;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    looppool::init(&[looppool::worker::<Ticker>()]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}
