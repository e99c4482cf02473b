//! Every behaviour of a pool over real worker processes, on tokio.

use looppool_testkit::conformance::{self, Adapter};
use looppool_tokio::{Entry, Runtime, Worker};
use std::future::Future;
use std::sync::Arc;

struct Tokio;

impl Adapter for Tokio {
    const NAME: &'static str = "tokio";

    fn runtime() -> Arc<dyn Runtime> {
        looppool_tokio::runtime()
    }

    fn entry<W: Worker>() -> Entry {
        looppool_tokio::worker::<W>()
    }

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
            .block_on(future)
    }
}

fn main() {
    conformance::main::<Tokio>();
}
