//! A library that offers a pool-backed service and stays runtime-neutral: it depends on
//! `looppool-core` only, registers its worker where the worker is defined, and takes the
//! runtime from its user.
//!
//! What the library writes: its worker, `looppool_core::register!(ItsWorker)`, and a service
//! type that starts its pool with `Pool::builder(runtime)`. What its users write: their
//! adapter's `init(&[])` first thing in `main` (it runs every registered worker, this one
//! included, without `main` naming it), and `Checksums::start(looppool_tokio::runtime(), n)`
//! (or `looppool::rt::smol::runtime()`, …).
#![forbid(unsafe_code)]

use looppool_core::{
    async_trait, BoxError, CallError, Context, Error, Failure, Pool, Runtime, Stopped, Worker,
};
use std::sync::Arc;

/// The worker: the FNV-1a checksum of a byte string, computed in a worker process.
#[derive(Debug)]
pub struct ChecksumWorker;

#[async_trait(?Send)]
impl Worker for ChecksumWorker {
    type Task = Vec<u8>;
    /// The checksum, and the process id of the worker that computed it.
    type Output = (u64, u32);
    type Error = Failure;

    fn name() -> &'static str {
        "looppool-example-library/checksum"
    }

    async fn init(_: &Context<Self::Output>) -> Result<Self, BoxError> {
        Ok(ChecksumWorker)
    }

    async fn process(&self, bytes: Vec<u8>, ctx: &Context<Self::Output>) -> Result<(), Failure> {
        let sum = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        ctx.put((sum, std::process::id())).await?;
        Ok(())
    }
}

// Where the worker is defined: the program's `init` finds it here.
looppool_core::register!(ChecksumWorker);

/// The library's service: checksums computed in a pool of worker processes.
#[derive(Debug, Clone)]
pub struct Checksums {
    pool: Pool<ChecksumWorker>,
}

impl Checksums {
    /// Starts `workers` worker processes; the pool's parent side runs on `runtime`, the
    /// caller's (for example `looppool::runtime()`).
    pub async fn start(runtime: Arc<dyn Runtime>, workers: usize) -> Result<Self, Error> {
        let pool = Pool::builder(runtime)
            .name("checksums")
            .workers(workers)
            .start()
            .await?;
        Ok(Checksums { pool })
    }

    /// The checksum of `bytes`, and the process id of the worker that computed it.
    pub async fn checksum(&self, bytes: Vec<u8>) -> Result<(u64, u32), CallError> {
        self.pool.call(bytes).await
    }

    /// Stops the service's workers.
    pub async fn stop(self) -> Stopped {
        self.pool.stop().await
    }
}
