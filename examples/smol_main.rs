//! `init` as the first line of the future a smol `main` blocks on.
//!
//! ```text
//! cargo run --example smol_main
//! ```

use looppool_examples::square::{square_four, Squarer};

fn main() {
    smol::block_on(async {
        looppool::rt::smol::init(&[looppool::rt::smol::worker::<Squarer>()]);
        let pool = looppool::rt::smol::builder::<Squarer>()
            .workers(2)
            .start()
            .await
            .expect("the pool starts");
        square_four(pool, "smol").await;
    });
}
