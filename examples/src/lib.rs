//! The examples live beside this crate (`quickstart.rs`, ...); this library holds nothing but
//! this note, and `tests/` runs each example so that none can rot.
#![forbid(unsafe_code)]
