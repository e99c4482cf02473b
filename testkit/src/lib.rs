//! Test tooling for looppool, shared by every adapter.
//!
//! - [`conformance`]: the behaviours every adapter must show over real worker processes,
//!   written once and instantiated by each adapter's `tests/conformance.rs`.
//! - [`model`]: a reference model of the pool's sans-IO state and a proptest model check of
//!   every invariant against it, with deliberate faults that prove each check can fail.
#![forbid(unsafe_code)]

pub mod conformance;
pub mod model;
