//! Test tooling for looppool: for users' own workers, and shared by every adapter.
//!
//! **Testing your own worker.** [`sim::PoolCheck`] runs random scripts (submissions, targeted
//! submissions, broadcasts, worker kills, naps, stops; a prompt or a slow reader) against
//! simulated pools of your worker, seeded and on a fake clock, checks the pool's promises after
//! every step and your property at the end, and shrinks a failure to a minimal script. Its
//! [`run`](sim::PoolCheck::run) runs one script for one seed, the same way every time, in a
//! plain `#[test]`. Your worker's timers must go through its context
//! ([`Context::sleep`](looppool_core::Context::sleep)) to run on the simulated clock.
//!
//! **Real worker processes from a test binary.** Re-executed workers start the test binary
//! again, whose `main` must call `init` first, and libtest's `main` does not. Either start the
//! pools of ordinary `#[test]`s with `StartMethod::Thread` (workers are threads, no init needed)
//! or `StartMethod::Fork` (from a single-threaded test process; run with
//! `--test-threads=1`), or give the test target a `main` of its own (`harness = false` in
//! `Cargo.toml`) that calls `looppool::init(&[...])` first and then runs the tests, as this
//! crate's conformance suite does with `libtest-mimic`:
//!
//! ```toml
//! [[test]]
//! name = "pools"
//! harness = false
//! ```
//!
//! ```ignore
//! fn main() {
//!     looppool::init(&[looppool::worker::<MyWorker>()]);
//!     let args = libtest_mimic::Arguments::from_args();
//!     libtest_mimic::run(&args, vec![libtest_mimic::Trial::test("serves", serves)]).exit();
//! }
//! ```
//!
//! - [`conformance`]: the behaviours every adapter must show over real worker processes,
//!   written once and instantiated by each adapter's `tests/conformance.rs`.
//! - [`model`]: a reference model of the pool's sans-IO state and a proptest model check of
//!   every invariant against it, with deliberate faults that prove each check can fail.
//! - [`members`]: the same for the placement over members that come and go (the NATS pool's
//!   routing, backlogs and task table).
//! - [`sim`]: whole pools (driver, workers, transport) in a deterministic simulation with a fake
//!   clock, where proptest explores interleavings of stops, deaths and slow consumers.
//! - [`nats_server`]: a real `nats-server` for tests, found on `PATH` or provisioned without
//!   root under the target directory.
#![forbid(unsafe_code)]

pub mod conformance;
pub mod members;
pub mod model;
pub mod nats_server;
pub mod sim;
