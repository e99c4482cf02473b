//! A tokio program using a runtime-neutral library's pool-backed service
//! (`looppool-example-library`) and a worker of another crate (`looppool_examples::square`),
//! both registered where they are defined: `main`'s `init(&[])` names neither.
//!
//! ```text
//! cargo run --example library_tokio
//! ```

use looppool_example_library::Checksums;
use looppool_examples::square::{square_four, Squarer};

#[tokio::main]
async fn main() {
    // Runs every registered worker type in worker processes; names none of them.
    looppool::init(&[]);
    let checksums = Checksums::start(looppool::runtime(), 2)
        .await
        .expect("the library's pool starts");
    let (sum, pid) = checksums
        .checksum(b"looppool".to_vec())
        .await
        .expect("a checksum");
    println!(
        "checksum of looppool is {sum:016x} (worker process {pid}, parent {})",
        std::process::id()
    );
    println!(
        "tokio: library pool stopped (graceful: {})",
        checksums.stop().await.is_graceful()
    );
    let squares = looppool::builder::<Squarer>()
        .workers(2)
        .start()
        .await
        .expect("the pool starts");
    square_four(squares, "tokio").await;
}
