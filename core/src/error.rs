//! The errors the pool reports.
//!
//! Every error that refuses a value hands it back (`into_inner`), so a failed submit or put
//! never loses the caller's data.

use crate::state::Refusal;
use std::fmt;

mod call;
mod failure;

pub use call::CallError;
pub use failure::Failure;

/// A boxed error, as returned by a worker's hooks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a worker process (or thread) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// The process exited with this code.
    Code(i32),
    /// The process was ended by this signal.
    Signal(i32),
    /// A worker thread ([`StartMethod::Thread`](crate::StartMethod)) ended; `panicked` tells how.
    Thread {
        /// Whether the thread's runtime panicked.
        panicked: bool,
    },
    /// The status could not be collected (the pool was dropped, or another reaper took it).
    Unknown,
}

impl Exit {
    /// Whether this is a clean exit: code 0, or a thread that returned.
    pub fn success(&self) -> bool {
        matches!(self, Exit::Code(0) | Exit::Thread { panicked: false })
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(sig) => match nix::sys::signal::Signal::try_from(sig) {
                Ok(name) => write!(f, "signal {sig} ({name})"),
                Err(_) => write!(f, "signal {sig}"),
            },
            Exit::Thread { panicked: false } => f.write_str("thread returned"),
            Exit::Thread { panicked: true } => f.write_str("thread panicked"),
            Exit::Unknown => f.write_str("unknown exit status"),
        }
    }
}

/// How a task failed. A task ends exactly once: `Ok(())` or one of these.
///
/// `E` is the worker's [`Error`](crate::Worker::Error) type: a failure reaches the parent as
/// that value, decoded from what the worker sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError<E = Failure> {
    /// The worker's `process` returned this error. The worker went on.
    #[error("task failed: {0}")]
    Failed(E),
    /// The worker's `process` panicked; this is the panic message. The worker went on.
    #[error("task panicked: {message}")]
    Panicked {
        /// The panic's text.
        message: String,
    },
    /// The task ran past its timeout (the pool's task timeout, or its own deadline) and was
    /// cancelled in its worker, which went on.
    #[error("task timed out after {after:?}")]
    TimedOut {
        /// The timeout.
        after: std::time::Duration,
    },
    /// The task was cancelled ([`TaskHandle::abort`](crate::TaskHandle::abort), a dropped
    /// [`call`](crate::Pool::call) future) before it ended. Its worker drops it; outputs it emits
    /// from then on are discarded.
    #[error("task cancelled")]
    Cancelled,
    /// The worker holding the task died or its link broke before the task ended.
    #[error("task lost: worker {worker} ended ({exit}){}", cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    Lost {
        /// The worker number.
        worker: usize,
        /// How its process ended.
        exit: Exit,
        /// Why its link ended, when that was an error (a malformed frame, a protocol violation).
        cause: Option<String>,
    },
    /// The task or its error could not be carried between the processes: the worker could not
    /// decode the task, or encode the error `process` returned (then its text is here), or the
    /// parent could not decode that error. The worker went on.
    #[error("task ended without a readable result: {message}")]
    Codec {
        /// What could not be encoded or decoded, and why.
        message: String,
    },
    /// In a pool whose members are processes reached through a broker (`looppool-nats`): the
    /// task cannot end. It was for one member and that member left or died, or it was
    /// delivered as often as the pool allows, or the pool stopped with no member to run it.
    #[error("task lost with member {member}: {reason}")]
    MemberLost {
        /// The member that held it last.
        member: String,
        /// Why.
        reason: String,
    },
    /// In a pool reached through a broker: the pool was cut off from the broker past its
    /// broker timeout. Whether the task ran is unknown, and an end reported later is ignored.
    #[error("the broker was out of reach: {reason}")]
    Broker {
        /// For how long, and the last error.
        reason: String,
    },
}

impl<E> TaskError<E> {
    /// Whether the task was lost with its worker or member (and so may be worth retrying).
    pub fn is_lost(&self) -> bool {
        matches!(self, TaskError::Lost { .. } | TaskError::MemberLost { .. })
    }

    /// Whether the task ended because the pool's broker stayed out of reach.
    pub fn is_broker(&self) -> bool {
        matches!(self, TaskError::Broker { .. })
    }

    /// The worker's error, if `process` returned one.
    pub fn failure(&self) -> Option<&E> {
        match self {
            TaskError::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The same end with the worker's error mapped by `f`.
    pub fn map<F>(self, f: impl FnOnce(E) -> F) -> TaskError<F> {
        match self {
            TaskError::Failed(e) => TaskError::Failed(f(e)),
            TaskError::Panicked { message } => TaskError::Panicked { message },
            TaskError::TimedOut { after } => TaskError::TimedOut { after },
            TaskError::Cancelled => TaskError::Cancelled,
            TaskError::Lost {
                worker,
                exit,
                cause,
            } => TaskError::Lost {
                worker,
                exit,
                cause,
            },
            TaskError::Codec { message } => TaskError::Codec { message },
            TaskError::MemberLost { member, reason } => TaskError::MemberLost { member, reason },
            TaskError::Broker { reason } => TaskError::Broker { reason },
        }
    }
}

/// A task's end as the parent first receives it: the worker's error still encoded.
pub(crate) type RawTaskError = TaskError<Vec<u8>>;

impl RawTaskError {
    /// Decodes the worker's error, carried as its postcard encoding (as a transport that
    /// carries tasks between hosts receives it). A decoding that fails or panics gives
    /// [`TaskError::Codec`].
    pub fn decode<E: serde::de::DeserializeOwned>(self) -> TaskError<E> {
        match self {
            TaskError::Failed(bytes) => {
                let decoded = std::panic::catch_unwind(|| postcard::from_bytes::<E>(&bytes));
                match decoded {
                    Ok(Ok(e)) => TaskError::Failed(e),
                    Ok(Err(e)) => TaskError::Codec {
                        message: format!("cannot decode the worker's error: {e}"),
                    },
                    Err(panic) => TaskError::Codec {
                        message: format!(
                            "decoding the worker's error panicked: {}",
                            panic_message(&*panic)
                        ),
                    },
                }
            }
            other => other.map(|_| unreachable!("only Failed holds an error")),
        }
    }
}

/// A submission was refused; the task is handed back.
#[non_exhaustive]
pub enum SubmitError<T> {
    /// The chosen worker (or member) cannot take it now (only from `try_*` calls): it holds
    /// its capacity of unfinished tasks, or it is being replaced.
    Full(T),
    /// The pool is stopping or stopped.
    Closed(T),
    /// No worker can take it: the targeted worker does not exist or has exited, or none is
    /// alive (in a pool of members: no member is in the pool, or the one asked for is not).
    Unroutable(T, Refusal),
    /// The task could not be encoded, or its encoding exceeds the frame limit (in a pool
    /// reached through a broker: the broker's message size limit).
    Encode(T, String),
    /// In a pool reached through a broker: the broker did not store the task within the
    /// broker timeout, or is out of reach.
    Broker(T, String),
}

impl<T> SubmitError<T> {
    /// The task that was refused.
    pub fn into_inner(self) -> T {
        match self {
            SubmitError::Full(t)
            | SubmitError::Closed(t)
            | SubmitError::Unroutable(t, _)
            | SubmitError::Encode(t, _)
            | SubmitError::Broker(t, _) => t,
        }
    }

    /// Whether the refusal was because the worker was full.
    pub fn is_full(&self) -> bool {
        matches!(self, SubmitError::Full(_))
    }

    /// Whether the refusal was because the pool is stopping.
    pub fn is_closed(&self) -> bool {
        matches!(self, SubmitError::Closed(_))
    }

    pub(crate) fn from_refusal(task: T, refusal: Refusal) -> Self {
        match refusal {
            Refusal::Full { .. } | Refusal::Replacing { .. } => SubmitError::Full(task),
            Refusal::Closed => SubmitError::Closed(task),
            other => SubmitError::Unroutable(task, other),
        }
    }
}

impl<T> fmt::Debug for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Full(_) => f.write_str("Full(..)"),
            SubmitError::Closed(_) => f.write_str("Closed(..)"),
            SubmitError::Unroutable(_, r) => write!(f, "Unroutable(.., {r:?})"),
            SubmitError::Encode(_, e) => write!(f, "Encode(.., {e:?})"),
            SubmitError::Broker(_, e) => write!(f, "Broker(.., {e:?})"),
        }
    }
}

impl<T> fmt::Display for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Full(_) => f.write_str("the worker's task queue is full"),
            SubmitError::Closed(_) => f.write_str("the pool is stopping and accepts no new tasks"),
            SubmitError::Unroutable(_, r) => write!(f, "no worker can take the task: {r}"),
            SubmitError::Encode(_, e) => write!(f, "cannot send the task: {e}"),
            SubmitError::Broker(_, e) => write!(f, "the broker did not take the task: {e}"),
        }
    }
}

impl<T> std::error::Error for SubmitError<T> {}

/// A worker could not emit an output; the output is handed back.
#[non_exhaustive]
pub enum PutError<O> {
    /// No result credit is left (only from `try_put`): the parent has not acknowledged enough.
    Full(O),
    /// The link to the parent is closing, or the task this context belongs to has ended (use
    /// [`Context::unsolicited`](crate::Context::unsolicited) for outputs of background work);
    /// the output was not sent.
    Closed(O),
    /// The output could not be encoded, or its encoding exceeds the frame limit.
    Encode(O, String),
}

impl<O> PutError<O> {
    /// The output that was refused.
    pub fn into_inner(self) -> O {
        match self {
            PutError::Full(o) | PutError::Closed(o) | PutError::Encode(o, _) => o,
        }
    }

    /// Whether the refusal was for lack of result credit.
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full(_))
    }
}

impl<O> fmt::Debug for PutError<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::Encode(_, e) => write!(f, "Encode(.., {e:?})"),
        }
    }
}

impl<O> fmt::Display for PutError<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("no result credit left"),
            PutError::Closed(_) => f.write_str("the link to the parent is closing"),
            PutError::Encode(_, e) => write!(f, "cannot send the output: {e}"),
        }
    }
}

impl<O> std::error::Error for PutError<O> {}

/// The pool could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder setting is out of range.
    #[error("invalid pool configuration: {0}")]
    Config(String),
    /// Fork was asked for while the process has other threads.
    #[error(
        "cannot fork workers: the process has {threads} threads, and fork is only safe while it \
         has one; build fork pools before starting any runtime threads or re-exec pools, or use \
         StartMethod::ReExec"
    )]
    ForkUnsafe {
        /// How many threads the process had.
        threads: usize,
    },
    /// A worker process or thread could not be launched.
    #[error("cannot launch worker {worker}: {source}")]
    Launch {
        /// The worker number.
        worker: usize,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A worker refused or broke the handshake (protocol version mismatch, unknown worker type,
    /// exit before answering, no answer in time).
    #[error("worker {worker} failed the handshake: {reason}")]
    Handshake {
        /// The worker number.
        worker: usize,
        /// What went wrong.
        reason: String,
    },
    /// A worker's `init` hook returned an error or panicked.
    #[error("worker {worker} failed to initialise: {message}")]
    Init {
        /// The worker number.
        worker: usize,
        /// The error's text.
        message: String,
    },
}

/// Formats an error with its chain of sources, `outer: inner: innermost`.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}
