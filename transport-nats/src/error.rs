//! Errors of the NATS transport. A task's errors are the core's
//! ([`TaskError`](looppool_core::TaskError), [`SubmitError`](looppool_core::SubmitError),
//! [`CallError`](looppool_core::CallError)), as in a local pool.

/// Starting a pool or a member failed, or a member ended with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of range, or a name is not usable as a NATS subject token.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The NATS server could not be reached.
    #[error("cannot connect to the NATS server at {server}: {message}")]
    Connect {
        /// The address given.
        server: String,
        /// What the client said.
        message: String,
    },
    /// The broker refused or failed a request (JetStream not enabled, a stream that cannot be
    /// created, a broker that stayed away past the broker timeout).
    #[error("broker: {0}")]
    Broker(String),
    /// The pool has a live parent already: a second one is refused.
    #[error("{0}")]
    InUse(String),
    /// The pool's parent refused this member.
    #[error("the pool refused this member: {0}")]
    Refused(String),
    /// The parent told this member to leave because it had gone silent.
    #[error("evicted from the pool: {0}")]
    Evicted(String),
    /// Something did not happen in time (members that did not join, a parent that did not
    /// answer).
    #[error("timed out: {0}")]
    Timeout(String),
    /// The member's local pool of workers could not start.
    #[error("the member's workers: {0}")]
    Local(String),
}

/// A task's end as the parent receives it from a member: the worker's error still encoded,
/// decoded by the task's handle as the worker's error type.
pub(crate) type RawTaskError = looppool_core::TaskError<Vec<u8>>;
