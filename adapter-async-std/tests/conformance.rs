//! Every behaviour of a pool over real worker processes, on async-std. Fork is not among the
//! start methods: async-std's parent always runs threads, and fork is refused then (a trial
//! checks that refusal).

use looppool_async_std::{Entry, Runtime, StartMethod, Worker};
use looppool_testkit::conformance::{self, Adapter};
use std::future::Future;
use std::sync::Arc;

struct AsyncStd;

impl Adapter for AsyncStd {
    const NAME: &'static str = "async-std";

    fn runtime() -> Arc<dyn Runtime> {
        looppool_async_std::runtime()
    }

    fn entry<W: Worker>() -> Entry {
        looppool_async_std::worker::<W>()
    }

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        async_std::task::block_on(future)
    }
}

fn main() {
    conformance::run(
        &conformance::entries::<AsyncStd>(),
        &[conformance::parent::<AsyncStd>()],
        conformance::trials::<AsyncStd>(&[StartMethod::ReExec, StartMethod::Thread]),
    );
}
