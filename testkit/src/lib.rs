//! Test tooling for looppool, shared by every adapter.
//!
//! - [`conformance`]: the behaviours every adapter must show over real worker processes,
//!   written once and instantiated by each adapter's `tests/conformance.rs`.
//! - [`model`]: a reference model of the pool's sans-IO state and a proptest model check of
//!   every invariant against it, with deliberate faults that prove each check can fail.
//! - [`sim`]: whole pools (driver, workers, transport) in a deterministic simulation with a fake
//!   clock, where proptest explores interleavings of stops, deaths and slow consumers.
//! - [`nats_server`]: a real `nats-server` for tests, found on `PATH` or provisioned without
//!   root under the target directory.
#![forbid(unsafe_code)]

pub mod conformance;
pub mod model;
pub mod nats_server;
pub mod sim;
