//! `init` as the first line of an `async fn main` under `#[tokio::main]`: the worker processes
//! run their own runtime on a thread of their own, never inside the one the macro started.
//!
//! ```text
//! cargo run --example tokio_main
//! ```

use looppool_examples::square::{square_four, Squarer};

#[tokio::main]
async fn main() {
    looppool::init(&[looppool::worker::<Squarer>()]);
    let pool = looppool::builder::<Squarer>()
        .workers(2)
        .start()
        .await
        .expect("the pool starts");
    square_four(pool, "tokio").await;
}
