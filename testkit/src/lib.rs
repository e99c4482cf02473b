//! Test tooling for looppool, shared by every adapter.
//!
//! - [`conformance`]: the behaviours every adapter must show over real worker processes,
//!   written once and instantiated by each adapter's `tests/conformance.rs`.
#![forbid(unsafe_code)]

pub mod conformance;
