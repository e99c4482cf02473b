//! The worker of the examples whose `main` runs under a runtime's attribute
//! (`tokio_main.rs`, `async_std_main.rs`, `smol_main.rs`): it squares numbers and says which
//! process it ran in.

use looppool::{async_trait, BoxError, Context, Failure, Pool, Worker};

/// Squares a number.
#[derive(Debug)]
pub struct Squarer;

#[async_trait(?Send)]
impl Worker for Squarer {
    type Task = u64;
    /// The square, and the process id of the worker that computed it.
    type Output = (u64, u32);
    type Error = Failure;

    async fn init(_: &Context<Self::Output>) -> Result<Self, BoxError> {
        Ok(Squarer)
    }

    async fn process(&self, n: u64, ctx: &Context<Self::Output>) -> Result<(), Failure> {
        ctx.put((n * n, std::process::id())).await?;
        Ok(())
    }
}

// Registered where it is defined: a `main` that calls `init(&[])` can run it too.
looppool::register!(Squarer);

/// Squares 1 to 4 in `pool`, prints each answer, stops the pool and prints how it stopped.
pub async fn square_four(pool: Pool<Squarer>, runtime: &str) {
    for n in 1..=4 {
        match pool.call(n).await {
            Ok((square, pid)) => println!(
                "{n} squared is {square} (worker process {pid}, parent {})",
                std::process::id()
            ),
            Err(e) => println!("{n}: {e}"),
        }
    }
    let stopped = pool.stop().await;
    println!(
        "{runtime}: pool stopped (graceful: {})",
        stopped.is_graceful()
    );
}
