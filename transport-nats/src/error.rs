//! Errors of the NATS transport.

use std::fmt;
use std::time::Duration;

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

/// How a task failed. A task's handle resolves exactly once: `Ok(())` or one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The worker's `process` returned an error; this is its message.
    #[error("task failed: {message}")]
    Failed {
        /// The error's text.
        message: String,
    },
    /// The worker's `process` panicked; this is the panic message.
    #[error("task panicked: {message}")]
    Panicked {
        /// The panic's text.
        message: String,
    },
    /// The task ran past the member's task timeout.
    #[error("task timed out after {after:?}")]
    TimedOut {
        /// The timeout.
        after: Duration,
    },
    /// The task cannot end: it was for one member (targeted or broadcast) and that member left
    /// or died, or the worker process running it died inside its member, or the pool stopped
    /// with no member left to run it.
    #[error("task lost with member {member}: {reason}")]
    Lost {
        /// The member that held it.
        member: String,
        /// Why.
        reason: String,
    },
    /// The parent was cut off from the broker past its broker timeout: whether the task ran
    /// is unknown, and an end reported later is ignored.
    #[error("the broker was out of reach: {reason}")]
    Broker {
        /// For how long, and the last error.
        reason: String,
    },
}

impl TaskError {
    /// Whether the task ended because the broker stayed out of reach.
    pub fn is_broker(&self) -> bool {
        matches!(self, TaskError::Broker { .. })
    }

    /// Whether the task was lost (and so may be worth submitting again).
    pub fn is_lost(&self) -> bool {
        matches!(self, TaskError::Lost { .. })
    }
}

/// A submission was refused; the task is handed back.
#[non_exhaustive]
pub enum SubmitError<T> {
    /// The chosen member holds its backlog of unfinished tasks (only from `try_*` calls).
    Full(T),
    /// The pool is stopping or stopped.
    Closed(T),
    /// No member is in the pool.
    NoMember(T),
    /// The targeted member is not in the pool.
    UnknownMember(T, String),
    /// The task could not be encoded, or it exceeds the broker's message size limit.
    Encode(T, String),
    /// The broker did not store the task within the broker timeout.
    Broker(T, String),
}

impl<T> SubmitError<T> {
    /// The task that was refused.
    pub fn into_inner(self) -> T {
        match self {
            SubmitError::Full(t)
            | SubmitError::Closed(t)
            | SubmitError::NoMember(t)
            | SubmitError::UnknownMember(t, _)
            | SubmitError::Encode(t, _)
            | SubmitError::Broker(t, _) => t,
        }
    }

    /// Whether the refusal was because the member was full.
    pub fn is_full(&self) -> bool {
        matches!(self, SubmitError::Full(_))
    }

    /// Whether the refusal was because the pool is stopping.
    pub fn is_closed(&self) -> bool {
        matches!(self, SubmitError::Closed(_))
    }
}

impl<T> fmt::Display for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Full(_) => f.write_str("the member holds its backlog of tasks"),
            SubmitError::Closed(_) => f.write_str("the pool is stopping"),
            SubmitError::NoMember(_) => f.write_str("no member is in the pool"),
            SubmitError::UnknownMember(_, m) => write!(f, "member {m} is not in the pool"),
            SubmitError::Encode(_, e) => write!(f, "cannot send the task: {e}"),
            SubmitError::Broker(_, e) => write!(f, "the broker did not take the task: {e}"),
        }
    }
}

impl<T> fmt::Debug for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubmitError({self})")
    }
}

impl<T> std::error::Error for SubmitError<T> {}
