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

pub mod capture;
mod misfits;
mod probe;
mod trials;

pub use misfits::{ExitingInit, FailingInit, Touchy, TouchyWorker, TOUCHY_LIVE, TOUCHY_PANIC};
pub use probe::{fnv1a, Grumpy, Out, Probe, ProbeError, Refuse, Task};

use futures_util::future::{select, Either};
use libtest_mimic::{Arguments, Failed, Trial};
use looppool_core::{Entry, Runtime, StartMethod, Worker};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

/// What the suite needs from an adapter under test.
pub trait Adapter: 'static {
    /// The adapter's name, for messages; unique among the suites of one test program.
    const NAME: &'static str;

    /// The runtime binding the parent side uses.
    fn runtime() -> Arc<dyn Runtime>;

    /// The runtime fork and thread workers build; `None` for the parent's.
    fn worker_runtime() -> Option<Arc<dyn Runtime>> {
        None
    }

    /// The entry that runs worker `W` in a re-executed process.
    fn entry<W: Worker>() -> Entry;

    /// Builds a parent runtime on this thread and runs `future` on it. For fork trials it must
    /// not start other threads.
    fn block_on<T>(future: impl Future<Output = T>) -> T;
}

/// The worker entries the suite's processes need, to pass to `init`.
pub fn entries<A: Adapter>() -> Vec<Entry> {
    vec![
        A::entry::<Probe>(),
        A::entry::<FailingInit>(),
        A::entry::<ExitingInit>(),
        A::entry::<TouchyWorker>(),
    ]
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

fn method_name(method: StartMethod) -> &'static str {
    match method {
        StartMethod::Fork => "fork",
        StartMethod::ReExec => "reexec",
        _ => "thread",
    }
}

/// Every trial for adapter `A` with each of `methods`, in that order.
pub fn trials<A: Adapter>(methods: &[StartMethod]) -> Vec<Trial> {
    let mut all = Vec::new();
    for &method in methods {
        for (name, scope, body) in trials::all::<A>() {
            if !scope.covers(method) {
                continue;
            }
            let name = format!("{}::{}::{name}", A::NAME, method_name(method));
            all.push(Trial::test(name, move || {
                let runtime = A::runtime();
                let outcome = A::block_on(async move {
                    within(&*runtime, TRIAL_LIMIT, "the trial", body(method)).await?
                });
                outcome.map_err(Failed::from)
            }));
        }
    }
    all
}

/// When set to `adapter:method`, the test program acts as a pool's parent (for the orphan
/// trial): it starts a pool, prints its workers' pids on one line, and waits to be killed.
const PARENT_VAR: &str = "LOOPPOOL_TESTKIT_PARENT";

/// How a test program acts as the parent process of adapter `A`'s orphan trial.
#[derive(Debug, Clone, Copy)]
pub struct Parent {
    name: &'static str,
    run: fn(StartMethod),
}

/// The [`Parent`] of adapter `A`.
pub fn parent<A: Adapter>() -> Parent {
    Parent {
        name: A::NAME,
        run: |method| A::block_on(trials::parent_until_killed::<A>(method)),
    }
}

/// A conformance test program: makes re-executed processes workers (with `entries`) or
/// orphan-trial parents (with `parents`), or runs `trials` sequentially on the main thread,
/// in their order (fork needs a single-threaded process, so fork trials go first).
pub fn run(entries: &[Entry], parents: &[Parent], trials: Vec<Trial>) {
    looppool_core::init(entries);
    if let Some(role) = std::env::var_os(PARENT_VAR) {
        std::env::remove_var(PARENT_VAR);
        let role = role.to_string_lossy();
        let (name, method) = role.split_once(':').expect("adapter:method");
        let method = if method == "fork" {
            StartMethod::Fork
        } else {
            StartMethod::ReExec
        };
        let parent = parents
            .iter()
            .find(|p| p.name == name)
            .expect("a known adapter");
        (parent.run)(method);
        return;
    }
    // Trials check what the pool (and its workers, through it) logged.
    capture::install();
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    libtest_mimic::run(&args, trials).exit();
}

/// The test program of an adapter that supports every start method.
pub fn main<A: Adapter>() {
    let methods = [StartMethod::Fork, StartMethod::ReExec, StartMethod::Thread];
    run(&entries::<A>(), &[parent::<A>()], trials::<A>(&methods));
}
