//! The conformance suite: every behaviour of a pool, over real worker processes, for any
//! adapter.
//!
//! An adapter instantiates it in a test target with `harness = false`:
//!
//! ```ignore
//! struct MyAdapter;
//! impl looppool_testkit::conformance::Adapter for MyAdapter { /* ... */ }
//!
//! fn main() {
//!     looppool_testkit::conformance::main::<MyAdapter>();
//! }
//! ```
//!
//! [`main`] first turns re-executed worker processes into workers, then runs every trial once
//! per start method, sequentially on the main thread: fork trials first, while the process
//! still has a single thread, then re-exec, then threads.

mod probe;
mod trials;

pub use probe::{FailingInit, Out, Probe, Refuse, Task};

use futures_util::future::{select, Either};
use libtest_mimic::{Arguments, Failed, Trial};
use looppool_core::{Entry, Runtime, StartMethod, Worker};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

/// What the suite needs from an adapter under test.
pub trait Adapter: 'static {
    /// The adapter's name, for messages.
    const NAME: &'static str;

    /// The runtime binding the parent side uses.
    fn runtime() -> Arc<dyn Runtime>;

    /// The entry that runs worker `W` in a re-executed process.
    fn entry<W: Worker>() -> Entry;

    /// Builds a parent runtime on this thread, without starting other threads, and runs
    /// `future` on it.
    fn block_on<T>(future: impl Future<Output = T>) -> T;
}

/// The worker entries the suite's processes need; [`main`] passes them to `init`.
pub fn entries<A: Adapter>() -> Vec<Entry> {
    vec![A::entry::<Probe>(), A::entry::<FailingInit>()]
}

/// How long one trial may take before it fails as hung.
const TRIAL_LIMIT: Duration = Duration::from_secs(120);

/// The result of one trial: `Err` carries what went wrong.
pub type Outcome = Result<(), String>;

/// Runs `future`, failing loudly if it takes longer than `limit`.
pub async fn within<T>(
    runtime: &dyn Runtime,
    limit: Duration,
    what: &str,
    future: impl Future<Output = T>,
) -> Result<T, String> {
    match select(pin!(future), runtime.sleep(limit)).await {
        Either::Left((value, _)) => Ok(value),
        Either::Right(_) => Err(format!("{what}: still waiting after {limit:?}")),
    }
}

/// Every trial for adapter `A`, one per behaviour and start method.
pub fn trials<A: Adapter>() -> Vec<Trial> {
    let mut all = Vec::new();
    for method in [StartMethod::Fork, StartMethod::ReExec, StartMethod::Thread] {
        let prefix = match method {
            StartMethod::Fork => "fork",
            StartMethod::ReExec => "reexec",
            _ => "thread",
        };
        for (name, processes_only, body) in trials::all::<A>() {
            if processes_only && method == StartMethod::Thread {
                continue;
            }
            let name = format!("{}::{prefix}::{name}", A::NAME);
            let trial = Trial::test(name, move || {
                let runtime = A::runtime();
                let outcome = A::block_on(async move {
                    within(&*runtime, TRIAL_LIMIT, "the trial", body(method)).await?
                });
                outcome.map_err(Failed::from)
            });
            all.push(trial);
        }
    }
    all
}

/// When set, the test program acts as a pool's parent (for the orphan trial): it starts a pool
/// with the named start method, prints its workers' pids on one line, and waits to be killed.
const PARENT_VAR: &str = "LOOPPOOL_TESTKIT_PARENT";

/// The whole test program of an adapter's conformance target.
pub fn main<A: Adapter>() {
    looppool_core::init(&entries::<A>());
    if let Some(method) = std::env::var_os(PARENT_VAR) {
        std::env::remove_var(PARENT_VAR);
        let method = if method == "fork" {
            StartMethod::Fork
        } else {
            StartMethod::ReExec
        };
        A::block_on(trials::parent_until_killed::<A>(method));
        return;
    }
    let mut args = Arguments::from_args();
    // Sequential, on the main thread: fork needs a single-threaded process.
    args.test_threads = Some(1);
    libtest_mimic::run(&args, trials::<A>()).exit();
}
