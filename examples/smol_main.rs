//! `init` as the first line of the future a smol `main` blocks on.
//!
//! ```text
//! cargo run --example smol_main
//! ```

use looppool_examples::square::{square_four, Squarer};

fn main() {
    smol::block_on(async {
        looppool::smol::init(&[looppool::smol::worker::<Squarer>()]);
        let pool = looppool::smol::builder::<Squarer>()
            .workers(2)
            .start()
            .await
            .expect("the pool starts");
        square_four(pool, "smol").await;
    });
}
