//! A smol program using the same runtime-neutral library as `library_tokio`: the library's
//! worker runs on smol here, with nothing in the library naming a runtime.
//!
//! ```text
//! cargo run --example library_smol
//! ```

use looppool_example_library::Checksums;

fn main() {
    // Runs every registered worker type in worker processes; names none of them.
    looppool::rt::smol::init(&[]);
    smol::block_on(async {
        let checksums = Checksums::start(looppool::rt::smol::runtime(), 2)
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
            "smol: library pool stopped (graceful: {})",
            checksums.stop().await.is_graceful()
        );
    });
}
