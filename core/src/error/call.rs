//! [`CallError`]: every way a request-reply call can fail, in one flat enum.

use super::{Exit, Failure, SubmitError, TaskError};
use crate::state::{Refusal, TaskId};

/// Why a request-reply [`call`](crate::Pool::call) gave no output: every way it can fail, in
/// one flat enum a handler matches in one `match`. `E` is the worker's
/// [`Error`](crate::Worker::Error) type.
///
/// A call owns its task, and a refused call does not hand it back (clone it first, or use
/// [`submit`](crate::Pool::submit), whose [`SubmitError`] does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError<E = Failure> {
    /// No worker had room (only from [`try_call`](crate::Pool::try_call)).
    #[error("no worker has room for the task")]
    Full,
    /// The pool is stopping or stopped.
    #[error("the pool is stopping and accepts no new tasks")]
    Closed,
    /// No worker can take the task: the targeted worker does not exist or has exited, or none
    /// is alive.
    #[error("no worker can take the task: {0}")]
    Unroutable(Refusal),
    /// The task could not be encoded, or its encoding exceeds the frame limit.
    #[error("cannot send the task: {0}")]
    Encode(String),
    /// The worker's `process` returned this error.
    #[error("task {task} failed: {error}")]
    Failed {
        /// The task.
        task: TaskId,
        /// The worker's error.
        error: E,
    },
    /// The worker's `process` panicked; this is the panic message.
    #[error("task {task} panicked: {message}")]
    Panicked {
        /// The task.
        task: TaskId,
        /// The panic's text.
        message: String,
    },
    /// The call's deadline, or the pool's task timeout, passed; the task was cancelled.
    #[error("task {task} timed out after {after:?}")]
    TimedOut {
        /// The task.
        task: TaskId,
        /// The timeout.
        after: std::time::Duration,
    },
    /// The task was cancelled (through another handle on it, or as the pool was killed).
    #[error("task {task} cancelled")]
    Cancelled {
        /// The task.
        task: TaskId,
    },
    /// The worker holding the task died, and the task was not retried or ran out of attempts.
    #[error("task {task} lost: worker {worker} ended ({exit}){}", cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
    Lost {
        /// The task.
        task: TaskId,
        /// The worker number.
        worker: usize,
        /// How its process ended.
        exit: Exit,
        /// Why its link ended, when that was an error.
        cause: Option<String>,
    },
    /// The task or its error could not be carried between the processes.
    #[error("task {task} ended without a readable result: {message}")]
    Codec {
        /// The task.
        task: TaskId,
        /// What could not be encoded or decoded, and why.
        message: String,
    },
    /// The task completed without emitting an output.
    #[error("task {task} completed without an output")]
    NoOutput {
        /// The task.
        task: TaskId,
    },
    /// In a pool of members reached through a broker: the task cannot end (its member left or
    /// died, it was delivered as often as the pool allows, or the pool stopped with no member).
    #[error("task {task} lost with member {member}: {reason}")]
    MemberLost {
        /// The task.
        task: TaskId,
        /// The member that held it last.
        member: String,
        /// Why.
        reason: String,
    },
    /// In a pool reached through a broker: the broker did not take the task, or the pool was
    /// cut off from it past its broker timeout while the task ran (`task` is then its id).
    #[error("the broker was out of reach: {reason}")]
    Broker {
        /// The task, if the pool had accepted it.
        task: Option<TaskId>,
        /// What the broker did, or for how long it was away.
        reason: String,
    },
}

impl<E> CallError<E> {
    /// The task's id, once the pool accepted it: to join the caller's logs with the worker's,
    /// whose forwarded events carry it in their `task` field.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            CallError::Full
            | CallError::Closed
            | CallError::Unroutable(_)
            | CallError::Encode(_) => None,
            CallError::Broker { task, .. } => *task,
            CallError::Failed { task, .. }
            | CallError::Panicked { task, .. }
            | CallError::TimedOut { task, .. }
            | CallError::Cancelled { task }
            | CallError::Lost { task, .. }
            | CallError::Codec { task, .. }
            | CallError::NoOutput { task }
            | CallError::MemberLost { task, .. } => Some(*task),
        }
    }

    /// The call's error for a refused submission; the task is dropped.
    pub fn refused<T>(e: SubmitError<T>) -> Self {
        match e {
            SubmitError::Full(_) => CallError::Full,
            SubmitError::Closed(_) => CallError::Closed,
            SubmitError::Unroutable(_, r) => CallError::Unroutable(r),
            SubmitError::Encode(_, e) => CallError::Encode(e),
            SubmitError::Broker(_, reason) => CallError::Broker { task: None, reason },
        }
    }

    /// The call's error for task `task` that ended as `e`.
    pub fn ended(task: TaskId, e: TaskError<E>) -> Self {
        match e {
            TaskError::Failed(error) => CallError::Failed { task, error },
            TaskError::Panicked { message } => CallError::Panicked { task, message },
            TaskError::TimedOut { after } => CallError::TimedOut { task, after },
            TaskError::Cancelled => CallError::Cancelled { task },
            TaskError::Lost {
                worker,
                exit,
                cause,
            } => CallError::Lost {
                task,
                worker,
                exit,
                cause,
            },
            TaskError::Codec { message } => CallError::Codec { task, message },
            TaskError::MemberLost { member, reason } => CallError::MemberLost {
                task,
                member,
                reason,
            },
            TaskError::Broker { reason } => CallError::Broker {
                task: Some(task),
                reason,
            },
        }
    }
}
