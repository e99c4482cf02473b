//! A deterministic simulation of whole pools: the async driver, the workers and the transport,
//! on one thread with seeded scheduling and a fake clock. Interleavings the state model cannot
//! show (a stop racing submissions, a death while draining, credit exhausted during a stop, a
//! consumer that never acknowledges) are explored by proptest, with no process and no sleep.

//!
//! [`PoolCheck`] brings the same to a user's own worker: a property test over random scripts
//! against simulated pools of it, in milliseconds, the worker's timers
//! ([`Context::sleep`](looppool_core::Context::sleep)) running on the fake clock.

mod check;
mod executor;
mod scenario;
mod script;

pub use check::PoolCheck;
pub use executor::{Sim, Stall};
pub use scenario::{
    run, scenarios, Consumer, Job, Napper, Op, Scenario, Trace, LIMIT, STOP_TIMEOUT,
};
pub use script::{Ran, Reader, Run, Step};
