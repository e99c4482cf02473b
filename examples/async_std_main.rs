//! `init` as the first line of an `async fn main` under `#[async_std::main]`.
//!
//! ```text
//! cargo run --example async_std_main
//! ```

use looppool_examples::square::{square_four, Squarer};

#[async_std::main]
async fn main() {
    looppool::rt::async_std::init(&[looppool::rt::async_std::worker::<Squarer>()]);
    let pool = looppool::rt::async_std::builder::<Squarer>()
        .workers(2)
        .start()
        .await
        .expect("the pool starts");
    square_four(pool, "async-std").await;
}
