//! The runtime-neutral core of **looppool**: a pool of worker processes, each driving its own
//! async event loop, exchanging messages with a parent that keeps serving its own loop.
//!
//! Use it through an adapter crate (`looppool-tokio`, `looppool-smol`, `looppool-async-std`),
//! which re-exports this crate and adds the runtime binding. The layers, from the bottom:
//!
//! - [`protocol`]: length-prefixed postcard frames and a versioned handshake;
//! - [`state`]: the sans-IO bookkeeping (routing, capacity, result credit, in-flight tasks, the
//!   stop state machine), with no I/O, clock or runtime, so it can be model-checked;
//! - the async driver ([`Pool`], [`Builder`]), written against the [`Runtime`] trait;
//! - launching ([`StartMethod`], [`init`]): re-exec, fork or threads.
//!
//! A worker implements [`Worker`]; the parent builds a [`Pool`] of it, submits tasks and reads
//! outputs. See the adapters' docs for runnable examples.
#![deny(unsafe_code)]
#![cfg(unix)]

mod error;
mod launch;
mod pipe;
mod pool;
pub mod protocol;
mod runtime;
#[cfg(test)]
mod send_sync;
pub mod state;
#[cfg(test)]
mod wakes;
mod worker;

pub use async_trait::async_trait;
pub use error::{BoxError, CallError, Error, Exit, Failure, PutError, SubmitError, TaskError};
pub use launch::{init, init_with_registered, Entry, StartMethod};

/// What [`register!`] expands to needs; not a public interface.
#[doc(hidden)]
pub mod __private {
    pub use crate::launch::Registration;
    pub use inventory;
}
pub use pipe::{duplex, PipeCloser, PipeEnd};
#[cfg(feature = "tower")]
pub use pool::ServiceFuture;
pub use pool::{
    metric_names, Builder, CallStream, Delivery, Outputs, Pool, PoolStats, Stopped, TaskHandle,
    WorkerStats,
};
#[doc(hidden)]
pub use pool::{CancelSink, MemberTask, OutputSender};
pub use runtime::{AsyncIo, BoxFuture, BoxIo, LocalBoxFuture, Runtime};
pub use state::{Routing, TaskId};
pub use worker::{Context, Worker};

#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub use launch::fork_sleeper;
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub use worker::Fault;
