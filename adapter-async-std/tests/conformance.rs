//! Every behaviour of a pool over real worker processes, on async-std: with the parent's pool
//! tasks on async-std's thread pool, and on an executor `main` runs. Fork is not among the
//! start methods: async-std's parent always runs threads, and fork is refused then (a trial
//! checks that refusal).

use looppool_async_std::{Entry, Executor, Runtime, StartMethod, Worker};
use looppool_testkit::conformance::{self, Adapter};
use std::future::Future;
use std::sync::Arc;

thread_local! {
    /// The parent's executor for [`OwnExecutor`], run on the test's main thread by `block_on`.
    static EXECUTOR: Arc<Executor<'static>> = Arc::new(Executor::new());
}

/// The pool's tasks on async-std's thread pool.
struct AsyncStd;

/// The pool's tasks on an executor the test's `block_on` runs.
struct OwnExecutor;

impl Adapter for OwnExecutor {
    const NAME: &'static str = "async-std-own-executor";

    fn runtime() -> Arc<dyn Runtime> {
        Arc::new(looppool_async_std::AsyncStd::with_executor(
            EXECUTOR.with(Arc::clone),
        ))
    }

    fn entry<W: Worker>() -> Entry {
        looppool_async_std::worker::<W>()
    }

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        let executor = EXECUTOR.with(Arc::clone);
        async_std::task::block_on(executor.run(future))
    }
}

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
    let mut trials = conformance::trials::<AsyncStd>(&[StartMethod::ReExec, StartMethod::Thread]);
    trials.extend(conformance::trials::<OwnExecutor>(&[StartMethod::ReExec]));
    conformance::run(
        &conformance::entries::<AsyncStd>(),
        &[
            conformance::parent::<AsyncStd>(),
            conformance::parent::<OwnExecutor>(),
        ],
        trials,
    );
}
