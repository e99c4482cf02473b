//! The public types' `Send` and `Sync` are asserted here, not assumed: a parent shares its pool
//! between tasks of a multi-threaded runtime and spawns the futures its methods return.

#![allow(dead_code)]

use crate::{
    async_trait, BoxError, Builder, CallStream, Context, Delivery, Failure, Outputs, Pool, Stopped,
    TaskHandle, Worker,
};

struct Probe;

#[async_trait(?Send)]
impl Worker for Probe {
    type Task = u64;
    type Output = u64;
    type Error = Failure;

    async fn init(_: &Context<u64>) -> Result<Self, BoxError> {
        Ok(Probe)
    }

    async fn process(&self, _: u64, _: &Context<u64>) -> Result<(), Failure> {
        Ok(())
    }
}

fn send<T: Send>(_: &T) {}
fn send_sync<T: Send + Sync>(_: &T) {}

fn the_parent_side_types_cross_threads(
    pool: Pool<Probe>,
    builder: Builder<Probe>,
    handle: TaskHandle,
    outputs: Outputs<u64>,
    delivery: Delivery<u64>,
    stopped: Stopped,
    stream: CallStream<u64>,
) {
    send_sync(&pool);
    send(&builder);
    send_sync(&handle);
    send_sync(&outputs);
    send_sync(&delivery);
    send_sync(&stopped);
    send(&stream);
    send(&builder.start());
    send(&pool.submit(1));
    send(&pool.submit_to(0, 1));
    send(&pool.broadcast(1));
    send(&pool.broadcast_sticky("key", 1));
    send(&pool.call(1));
    send(&pool.call_timeout(1, std::time::Duration::from_secs(1)));
    send(&pool.try_call(1));
    send(&pool.call_stream(1));
    send(&pool.submit_keyed("key", 1));
    send(&pool.stop());
    send(&outputs.recv());
}
