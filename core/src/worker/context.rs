//! The handle a worker uses to learn where it is and to emit outputs.

use crate::error::PutError;
use crate::protocol::{encode_with_payload, ToParent};
use crate::state::TaskId;
use event_listener::Event;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;

/// What a worker knows about its place in the pool, and the link's outgoing side.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) worker: usize,
    pub(super) pool_size: usize,
    pub(super) pool_name: String,
    pub(super) max_frame: usize,
    /// Outputs the worker may emit before the parent acknowledges more.
    pub(super) credit: Cell<usize>,
    pub(super) credit_returned: Event,
    /// Encoded frames the loop has not yet handed to the outbox.
    pub(super) outgoing: RefCell<Vec<u8>>,
    /// Frames handed over, for the writer or the flusher to send.
    pub(super) outbox: std::sync::Arc<super::outbox::Outbox>,
    /// Wakes the loop's writer: something was staged for the parent.
    pub(super) wake_writer: super::signal::Signal,
    /// Set once the worker said goodbye or lost its parent: no more outputs.
    pub(super) closed: Cell<bool>,
    /// Set by fault injection: close the link once the writer has flushed.
    pub(super) hang_up: Cell<bool>,
    /// Set by fault injection: write nothing after what is queued now.
    pub(super) stall_writer: Cell<bool>,
    /// Whether the worker has a process of its own (not a thread of the parent's).
    pub(super) own_process: bool,
    /// Tasks running now.
    pub(super) running: Cell<usize>,
    /// Log events dropped because the link was backed up.
    pub(super) logs_dropped: Cell<u64>,
    /// The worker's runtime, for timers.
    pub(super) runtime: std::sync::Arc<dyn crate::runtime::Runtime>,
    /// The worker configuration from the builder, encoded.
    pub(super) config: Option<std::sync::Arc<Vec<u8>>>,
}

impl Link {
    pub(super) fn close(&self) {
        self.closed.set(true);
        self.credit_returned.notify(usize::MAX);
        self.wake_writer.notify();
    }

    /// Hands the frames encoded so far to the outbox. After a stall was injected, they are the
    /// last it takes.
    pub(super) fn hand_over(&self) {
        if let Ok(mut staged) = self.outgoing.try_borrow_mut() {
            self.outbox.hand_over(&mut staged);
            if self.stall_writer.get() {
                self.outbox.seal();
            }
        }
    }

    pub(super) fn add_credit(&self, n: usize) {
        self.credit.set(self.credit.get() + n);
        // One more waiting `put` per credit: `notify(n)` would count putters already woken
        // but not yet run, and leave the rest asleep with credit available.
        self.credit_returned.notify_additional(n);
    }
}

/// A worker's view of the pool, and its way to emit outputs.
///
/// `init` receives one with no task id; each `process` call receives one carrying that task's
/// id, which tags the outputs it emits. Clones share the same link: a worker may keep the init
/// context to emit unsolicited outputs (tagged with no task) from its own background tasks.
pub struct Context<O> {
    link: Rc<Link>,
    task: Option<TaskId>,
    /// Set once the task this context belongs to has ended: its outputs are refused after that
    /// (the parent would take one for a task this worker no longer holds as a protocol error).
    ended: Option<Rc<Cell<bool>>>,
    _output: PhantomData<fn(O)>,
}

impl<O> Clone for Context<O> {
    fn clone(&self) -> Self {
        Self {
            link: self.link.clone(),
            task: self.task,
            ended: self.ended.clone(),
            _output: PhantomData,
        }
    }
}

impl<O> fmt::Debug for Context<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("worker", &self.link.worker)
            .field("pool_size", &self.link.pool_size)
            .field("task", &self.task)
            .field("credit", &self.link.credit.get())
            .finish()
    }
}

impl<O> Context<O> {
    pub(super) fn new(link: Rc<Link>, task: Option<TaskId>) -> Self {
        Self {
            link,
            task,
            ended: task.map(|_| Rc::new(Cell::new(false))),
            _output: PhantomData,
        }
    }

    /// Marks this context's task as ended, for every clone of it.
    pub(super) fn end_task(&self) {
        if let Some(ended) = &self.ended {
            ended.set(true);
        }
    }

    /// The worker configuration given on the builder ([`Builder::config`](crate::Builder::config)),
    /// decoded as `C`: the same value in every worker and every replacement. Fails if the
    /// builder gave none, or if it does not decode as `C`.
    ///
    /// ```
    /// use looppool_core::{async_trait, BoxError, Context, Failure, Worker};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Settings {
    ///     model_path: String,
    /// }
    ///
    /// struct Model {
    ///     path: String,
    /// }
    ///
    /// #[async_trait(?Send)]
    /// impl Worker for Model {
    ///     type Task = ();
    ///     type Output = String;
    ///     type Error = Failure;
    ///
    ///     async fn init(ctx: &Context<String>) -> Result<Self, BoxError> {
    ///         // The parent's builder had `.config(&Settings { model_path: … })`.
    ///         let settings: Settings = ctx.config()?;
    ///         Ok(Model { path: settings.model_path })
    ///     }
    ///
    ///     async fn process(&self, _: (), ctx: &Context<String>) -> Result<(), Failure> {
    ///         ctx.put(self.path.clone()).await?;
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn config<C: serde::de::DeserializeOwned>(&self) -> Result<C, crate::BoxError> {
        let bytes = self
            .link
            .config
            .as_ref()
            .ok_or("no worker configuration was given to this pool (Builder::config)")?;
        postcard::from_bytes(bytes).map_err(|e| {
            format!(
                "cannot decode the worker configuration as {}: {e}",
                std::any::type_name::<C>()
            )
            .into()
        })
    }

    /// Whether the builder gave a worker configuration ([`config`](Self::config)).
    pub fn has_config(&self) -> bool {
        self.link.config.is_some()
    }

    /// This worker's number, `0..pool_size`. A replacement keeps the number of the worker it
    /// replaces.
    pub fn worker(&self) -> usize {
        self.link.worker
    }

    /// How many workers the pool has.
    pub fn pool_size(&self) -> usize {
        self.link.pool_size
    }

    /// The pool's name.
    pub fn pool_name(&self) -> &str {
        &self.link.pool_name
    }

    /// The task this context belongs to, or `None` for the init context.
    pub fn task_id(&self) -> Option<TaskId> {
        self.task
    }

    /// A context for the same worker that tags outputs with no task (unsolicited outputs).
    pub fn unsolicited(&self) -> Self {
        Self::new(self.link.clone(), None)
    }

    /// A future that completes after `duration`, on this worker's runtime: a timer that works
    /// the same on every adapter.
    pub fn sleep(&self, duration: std::time::Duration) -> impl std::future::Future<Output = ()> {
        self.link.runtime.sleep(duration)
    }

    /// Outputs this worker may emit right now without waiting.
    pub fn credit(&self) -> usize {
        self.link.credit.get()
    }
}

impl<O: Serialize> Context<O> {
    /// Emits an output, waiting while the worker has no result credit left (the parent has not
    /// yet acknowledged `result_credit` earlier outputs). This is the back-pressure from a slow
    /// consumer to the worker.
    pub async fn put(&self, output: O) -> Result<(), PutError<O>> {
        let mut output = output;
        loop {
            match self.try_put(output) {
                Err(PutError::Full(o)) => output = o,
                done => return done,
            }
            let listener = self.link.credit_returned.listen();
            if self.link.credit.get() > 0 || self.link.closed.get() {
                continue;
            }
            listener.await;
        }
    }

    /// Emits an output if the worker has result credit left, or hands it back in
    /// [`PutError::Full`].
    pub fn try_put(&self, output: O) -> Result<(), PutError<O>> {
        let link = &*self.link;
        if link.closed.get() || self.ended.as_ref().is_some_and(|e| e.get()) {
            return Err(PutError::Closed(output));
        }
        let credit = link.credit.get();
        if credit == 0 {
            return Err(PutError::Full(output));
        }
        let header = ToParent::Output { task: self.task };
        let encoded = encode_with_payload(
            &mut link.outgoing.borrow_mut(),
            &header,
            &output,
            link.max_frame,
        );
        if let Err(e) = encoded {
            return Err(PutError::Encode(output, e.to_string()));
        }
        link.credit.set(credit - 1);
        link.wake_writer.notify();
        Ok(())
    }
}

/// A way to make a worker break the wire protocol, for testing the parent's defences.
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Fault {
    /// A length prefix far over any frame limit.
    Oversized,
    /// A well-sized frame whose body is not a valid header.
    Garbage,
    /// The start of a frame, then the link is closed.
    Truncated,
    /// The start of a frame, then silence with the link left open.
    Stalled,
    /// A statistics report whose every counter is at its maximum.
    AbsurdStats,
}

#[cfg(feature = "fault-injection")]
impl<O> Context<O> {
    #[doc(hidden)]
    pub fn inject_fault(&self, fault: Fault) {
        let mut out = self.link.outgoing.borrow_mut();
        match fault {
            Fault::Oversized => out.extend_from_slice(&u32::MAX.to_le_bytes()),
            Fault::Garbage => {
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&[0xff; 8]);
            }
            Fault::Truncated => {
                out.extend_from_slice(&100u32.to_le_bytes());
                out.extend_from_slice(&[0; 10]);
                self.link.hang_up.set(true);
            }
            Fault::Stalled => {
                out.extend_from_slice(&100u32.to_le_bytes());
                out.extend_from_slice(&[0; 10]);
                // Nothing may follow: a later frame would complete this one.
                self.link.stall_writer.set(true);
            }
            Fault::AbsurdStats => {
                let max = crate::protocol::WireStats {
                    cpu_us: u64::MAX,
                    rss: u64::MAX,
                    peak_rss: u64::MAX,
                    lag_us: u64::MAX,
                    queued: u32::MAX,
                    running: u32::MAX,
                    runtime_tasks: Some(u64::MAX),
                    logs_dropped: u64::MAX,
                };
                crate::protocol::encode_header(
                    &mut out,
                    &ToParent::Stats(max),
                    self.link.max_frame,
                )
                .expect("a small frame");
            }
        }
        self.link.wake_writer.notify();
    }

    /// A context whose outputs claim to belong to task `task`, whatever this worker holds.
    #[doc(hidden)]
    pub fn forged(&self, task: TaskId) -> Self {
        Self::new(self.link.clone(), Some(task))
    }
}
