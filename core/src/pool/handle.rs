//! What the parent holds: task handles and output deliveries (the output stream is in `outputs`).

use super::ending::EndReceiver;
use crate::error::{Exit, Failure, RawTaskError, TaskError};
use crate::state::TaskId;
use futures_channel::oneshot;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

/// Resolves, exactly once, to how one submitted task ended.
///
/// Dropping the handle does not cancel the task, as with tokio's `JoinHandle`: it only forgoes
/// learning how it ended ([`abort`](Self::abort) cancels it). In a pool of members reached
/// through a broker (`looppool-nats`) a task whose member died may run again elsewhere; its
/// handle still resolves once.
///
/// ```
/// # use looppool_core::{async_trait, BoxError, Context, Failure, Pool, StartMethod, Worker};
/// # struct Doubler;
/// # #[async_trait(?Send)]
/// # impl Worker for Doubler {
/// #     type Task = u64;
/// #     type Output = u64;
/// #     type Error = Failure;
/// #     async fn init(_: &Context<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
/// #     async fn process(&self, n: u64, ctx: &Context<u64>) -> Result<(), Failure> {
/// #         ctx.put(n * 2).await?;
/// #         Ok(())
/// #     }
/// # }
/// # use looppool_core::Runtime as _;
/// // The parent side on tokio, through its adapter: in a program, `#[tokio::main]`.
/// # looppool_tokio::runtime().block_on_local(Box::pin(async {
/// # let run = async {
/// let pool = Pool::<Doubler>::builder(looppool_tokio::runtime())
///     // Worker threads: a doctest's `main` does not call `init`, which re-executed workers need.
///     .start_method(StartMethod::Thread)
///     .workers(2)
///     .start()
///     .await?;
/// let handle = pool.submit_to(1, 7).await?;
/// assert_eq!(handle.worker(), 1);
/// handle.await?; // Ok(()): it completed; its output went to `outputs()`
/// assert_eq!(*pool.outputs().recv().await.expect("an output"), 14);
/// pool.stop().await;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # };
/// # run.await.expect("the example runs");
/// # }));
/// ```
#[must_use = "a task handle tells how the task ended; drop it explicitly to ignore that"]
///
/// `E` is the worker's [`Error`](crate::Worker::Error) type.
pub struct TaskHandle<E = Failure> {
    id: TaskId,
    worker: usize,
    end: End,
    canceller: Weak<dyn CancelSink>,
    error: PhantomData<fn() -> E>,
}

/// Where a handle learns its task's end.
enum End {
    /// From a local pool's slot, which also counts the task's attempts.
    Local(EndReceiver),
    /// From a pool of members reached through a broker: the end, the deliveries, and where the
    /// task is.
    Member {
        rx: oneshot::Receiver<Result<(), RawTaskError>>,
        deliveries: Arc<AtomicU32>,
        at: Arc<MemberTask>,
    },
}

/// Where a task of a pool of members is: the member holding it (which changes when the task
/// moves to another member) and the worker there that ran it, once known. For transports
/// (`looppool-nats`), which update it.
#[doc(hidden)]
#[derive(Debug)]
pub struct MemberTask {
    member: std::sync::Mutex<String>,
    worker: std::sync::atomic::AtomicUsize,
}

impl MemberTask {
    /// A task sent to `member`.
    pub fn new(member: &str) -> Self {
        Self {
            member: std::sync::Mutex::new(member.into()),
            worker: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The member holding the task.
    pub fn member(&self) -> String {
        self.member
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The task moved to `member`.
    pub fn set_member(&self, member: &str) {
        *self.member.lock().unwrap_or_else(|e| e.into_inner()) = member.into();
    }

    /// The member's worker that ran it.
    pub fn set_worker(&self, worker: usize) {
        self.worker.store(worker, Ordering::Relaxed);
    }
}

/// Where cancellations go: the pool's shared state (or, for a pool of members, the
/// transport's). Public for transports only.
#[doc(hidden)]
pub trait CancelSink: Send + Sync {
    /// Cancels task `id`; returns whether it had not ended.
    fn cancel(&self, id: TaskId) -> bool;
}

impl<E> fmt::Debug for TaskHandle<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.id)
            .field("member", &self.member())
            .field("worker", &self.worker())
            .finish()
    }
}

impl<E> TaskHandle<E> {
    pub(crate) fn new(
        id: TaskId,
        worker: usize,
        end: EndReceiver,
        canceller: Weak<dyn CancelSink>,
    ) -> Self {
        Self {
            id,
            worker,
            end: End::Local(end),
            canceller,
            error: PhantomData,
        }
    }

    /// The handle of task `id` of a pool of members reached through a broker: it resolves
    /// through `rx`, counts its deliveries to members in `deliveries`, is where `at` says, and
    /// is aborted through `canceller`. For transports (`looppool-nats`).
    #[doc(hidden)]
    pub fn of_member(
        id: TaskId,
        rx: oneshot::Receiver<Result<(), TaskError<Vec<u8>>>>,
        deliveries: Arc<AtomicU32>,
        at: Arc<MemberTask>,
        canceller: Weak<dyn CancelSink>,
    ) -> Self {
        Self {
            id,
            worker: 0,
            end: End::Member { rx, deliveries, at },
            canceller,
            error: PhantomData,
        }
    }

    /// Cancels the task, unless it already ended: it ends now as [`TaskError::Cancelled`]
    /// (awaiting this handle says so), frees its place in its worker at once, and its worker
    /// drops it at its next await; outputs it emits from then on are discarded, those already
    /// delivered stay. A worker that does not drop it within the cancel grace (code that never
    /// yields) is killed and replaced, and the other tasks it held are sent again (see
    /// [`Builder::cancel_grace`](crate::Builder::cancel_grace)). Returns whether the task was
    /// still running or queued. In a pool of members reached through a broker
    /// (`looppool-nats`), the task ends now as well, and its member is told to drop it (a
    /// member that has not received it yet drops it on arrival); it keeps its place in that
    /// member's backlog until the member reports it ended, and is never sent to another.
    pub fn abort(&self) -> bool {
        self.canceller
            .upgrade()
            .is_some_and(|sink| sink.cancel(self.id))
    }

    /// How many times the task was sent to a worker: 1, plus one per retry after its worker
    /// died (see [`Builder::retries`](crate::Builder::retries)). In a pool of members, how many
    /// times JetStream delivered it to a member, not counting deliveries a leaving member
    /// handed back unstarted (0 until its first delivery is known). Read it after awaiting the
    /// handle by reference (`(&mut handle).await`) to learn how the task got there.
    pub fn attempts(&self) -> u32 {
        match &self.end {
            End::Local(end) => end.attempts(),
            End::Member { deliveries, .. } => deliveries.load(Ordering::Relaxed),
        }
    }

    /// In a pool of members reached through a broker (`looppool-nats`): the member that ran
    /// the task (once it ended), or the one holding it; `None` in a local pool.
    pub fn member(&self) -> Option<String> {
        match &self.end {
            End::Local(_) => None,
            End::Member { at, .. } => Some(at.member()),
        }
    }

    /// The task's id, which tags its outputs (a retry keeps it).
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// The worker the task was sent to; in a pool of members, the worker of its member it was
    /// sent to there, once it ended (0 until then, and for a task lost with its member).
    pub fn worker(&self) -> usize {
        match &self.end {
            End::Member { at, .. } => at.worker.load(Ordering::Relaxed),
            End::Local(_) => self.worker,
        }
    }
}

impl<E: DeserializeOwned> Future for TaskHandle<E> {
    type Output = Result<(), TaskError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let ended = match &mut self.end {
            End::Local(end) => std::task::ready!(end.poll_end(cx)).ok(),
            End::Member { rx, .. } => std::task::ready!(Pin::new(rx).poll(cx)).ok(),
        };
        let worker = self.worker;
        Poll::Ready(
            ended
                .unwrap_or_else(|| match self.member() {
                    Some(member) => Err(TaskError::MemberLost {
                        member,
                        reason: "the pool was dropped".into(),
                    }),
                    None => Err(TaskError::Lost {
                        worker,
                        exit: Exit::Unknown,
                        cause: Some("the pool was dropped".into()),
                    }),
                })
                // The worker's error is decoded here, by its receiver, not on the pool's reader.
                .map_err(RawTaskError::decode),
        )
    }
}

/// Where acknowledgements go: the pool's shared state.
pub(crate) trait AckSink: Send + Sync {
    fn ack(&self, worker: usize);
}

/// Returns one result credit to the worker that emitted an output, when dropped.
///
/// It holds the pool weakly: deliveries wait in the pool's own queue, and a strong reference
/// would keep a stopped or dropped pool, and every output queued in it, alive forever.
pub(crate) enum Acker {
    /// An output of a local worker.
    Worker {
        sink: Weak<dyn AckSink>,
        worker: usize,
    },
    /// An output of a member of a pool reached through a broker: its transport acknowledges.
    Member(Option<Box<dyn FnOnce() + Send + Sync>>),
}

impl Drop for Acker {
    fn drop(&mut self) {
        match self {
            Acker::Worker { sink, worker } => {
                if let Some(sink) = sink.upgrade() {
                    sink.ack(*worker);
                }
            }
            Acker::Member(ack) => {
                if let Some(ack) = ack.take() {
                    ack();
                }
            }
        }
    }
}

/// One output from a worker.
///
/// While a delivery is alive it holds one of its worker's (in a pool of members, its member's)
/// result credits; dropping it (or
/// calling [`ack`](Self::ack) or [`into_value`](Self::into_value)) acknowledges it and lets the
/// worker emit another. A consumer that holds deliveries therefore slows the workers down.
///
/// ```
/// # use looppool_core::{async_trait, BoxError, Context, Failure, Pool, StartMethod, Worker};
/// # struct Doubler;
/// # #[async_trait(?Send)]
/// # impl Worker for Doubler {
/// #     type Task = u64;
/// #     type Output = u64;
/// #     type Error = Failure;
/// #     async fn init(_: &Context<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
/// #     async fn process(&self, n: u64, ctx: &Context<u64>) -> Result<(), Failure> {
/// #         ctx.put(n * 2).await?;
/// #         Ok(())
/// #     }
/// # }
/// # use looppool_core::Runtime as _;
/// // The parent side on tokio, through its adapter: in a program, `#[tokio::main]`.
/// # looppool_tokio::runtime().block_on_local(Box::pin(async {
/// # let run = async {
/// let pool = Pool::<Doubler>::builder(looppool_tokio::runtime())
///     // Worker threads: a doctest's `main` does not call `init`, which re-executed workers need.
///     .start_method(StartMethod::Thread)
///     .workers(2)
///     .start()
///     .await?;
/// let handle = pool.submit(21).await?;
/// let id = handle.id();
/// let outputs = pool.outputs();
/// let delivery = outputs.recv().await.expect("an output");
/// assert_eq!(delivery.task_id(), Some(id)); // the task that emitted it
/// assert!(delivery.worker() < 2);           // and its worker
/// assert_eq!(delivery.into_value(), 42);    // the value; this acknowledges it
/// handle.await?;
/// pool.stop().await;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # };
/// # run.await.expect("the example runs");
/// # }));
/// ```
pub struct Delivery<O> {
    value: O,
    worker: usize,
    task: Option<TaskId>,
    /// The member that emitted it, in a pool of members reached through a broker.
    member: Option<Arc<str>>,
    _acker: Acker,
}

impl<O: fmt::Debug> fmt::Debug for Delivery<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("member", &self.member)
            .field("worker", &self.worker)
            .field("task", &self.task)
            .field("value", &self.value)
            .finish()
    }
}

impl<O> Delivery<O> {
    pub(crate) fn new(value: O, worker: usize, task: Option<TaskId>, acker: Acker) -> Self {
        Self {
            value,
            worker,
            task,
            member: None,
            _acker: acker,
        }
    }

    /// An output of worker `worker` of member `member` of a pool reached through a broker,
    /// for task `task`: `ack` runs once, when it is acknowledged. For transports
    /// (`looppool-nats`).
    #[doc(hidden)]
    pub fn from_member(
        value: O,
        member: Arc<str>,
        worker: usize,
        task: Option<TaskId>,
        ack: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Self {
            value,
            worker,
            task,
            member: Some(member),
            _acker: Acker::Member(Some(Box::new(ack))),
        }
    }

    /// The worker that emitted it (in a pool of members: its number within its member).
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The member that emitted it, in a pool of members reached through a broker
    /// (`looppool-nats`); `None` in a local pool.
    pub fn member(&self) -> Option<&str> {
        self.member.as_deref()
    }

    /// The task it was emitted for, or `None` for an unsolicited output.
    pub fn task_id(&self) -> Option<TaskId> {
        self.task
    }

    /// The output.
    pub fn value(&self) -> &O {
        &self.value
    }

    /// Acknowledges the output now.
    pub fn ack(self) {}

    /// Acknowledges the output and returns it.
    pub fn into_value(self) -> O {
        self.value
    }
}

impl<O> std::ops::Deref for Delivery<O> {
    type Target = O;

    fn deref(&self) -> &O {
        &self.value
    }
}
