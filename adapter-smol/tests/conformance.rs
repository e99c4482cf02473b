//! Every behaviour of a pool over real worker processes, on smol; and the same with a tokio
//! parent driving smol workers, which proves that parent and workers need not share a runtime.

use looppool_smol::{Entry, Runtime, Smol, StartMethod, Worker};
use looppool_testkit::conformance::{self, Adapter};
use std::future::Future;
use std::sync::Arc;

thread_local! {
    /// The parent's executor, run on the test's main thread by `block_on`.
    static EXECUTOR: Arc<smol::Executor<'static>> = Arc::new(smol::Executor::new());
}

/// smol parent, smol workers.
struct SmolBoth;

impl Adapter for SmolBoth {
    const NAME: &'static str = "smol";

    fn runtime() -> Arc<dyn Runtime> {
        Arc::new(Smol::with_executor(EXECUTOR.with(Arc::clone)))
    }

    fn entry<W: Worker>() -> Entry {
        looppool_smol::worker::<W>()
    }

    fn block_on<T>(future: impl Future<Output = T>) -> T {
        let executor = EXECUTOR.with(Arc::clone);
        smol::block_on(executor.run(future))
    }
}

/// tokio parent, smol workers.
struct TokioParent;

impl Adapter for TokioParent {
    const NAME: &'static str = "tokio-parent-smol-workers";

    fn runtime() -> Arc<dyn Runtime> {
        looppool_tokio::runtime()
    }

    fn worker_runtime() -> Option<Arc<dyn Runtime>> {
        Some(Arc::new(Smol::global()))
    }

    fn entry<W: Worker>() -> Entry {
        looppool_smol::worker::<W>()
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
    use StartMethod::{Fork, ReExec, Thread};
    // smol's reactor starts a thread on first use, so the fork trials (tokio parent forking
    // smol workers) come first, while this process has a single thread.
    let mut trials = conformance::trials::<TokioParent>(&[Fork]);
    trials.extend(conformance::trials::<SmolBoth>(&[ReExec, Thread]));
    trials.extend(conformance::trials::<TokioParent>(&[ReExec, Thread]));
    conformance::run(
        &conformance::entries::<SmolBoth>(),
        &[
            conformance::parent::<SmolBoth>(),
            conformance::parent::<TokioParent>(),
        ],
        trials,
    );
}
