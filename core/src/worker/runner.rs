//! The runner: starts inbox tasks while fewer than the worker's concurrency run, runs each
//! under its deadline and cancellation, and reports each end to the parent.

use super::context::{Context, Link};
use super::observe::{self, InTask};
use super::serve::{truncate, End, Inbox};
use super::Worker;
use crate::error::panic_message;
use crate::protocol::{encode_header, ToParent, WireOutcome, HELLO_LIMIT, MESSAGE_LIMIT};
use crate::state::TaskId;
use futures_util::future::{select, AbortHandle, AbortRegistration, Abortable, Either, FutureExt};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

type Running = FuturesUnordered<futures_util::future::LocalBoxFuture<'static, (TaskId, Ended)>>;

pub(super) enum Ended {
    Completed,
    /// The worker's error, encoded.
    Failed(Vec<u8>),
    /// The task could not be decoded, or its error encoded.
    Codec(String),
    Panicked(String),
    TimedOut(Duration),
    Cancelled,
}

pub(super) async fn run_loop<W: Worker>(
    worker: Rc<W>,
    link: &Rc<Link>,
    inbox: &Inbox<W::Task>,
    concurrency: usize,
    timeout: Option<Duration>,
) -> End {
    let mut running: Running = FuturesUnordered::new();
    loop {
        while running.len() < concurrency {
            let Some((id, task)) = inbox.queue.borrow_mut().pop_front() else {
                break;
            };
            let (abort, registration) = AbortHandle::new_pair();
            inbox.running.borrow_mut().insert(id, abort);
            running.push(
                run_one(
                    worker.clone(),
                    link.clone(),
                    id,
                    task,
                    timeout,
                    registration,
                )
                .boxed_local(),
            );
        }
        link.running.set(running.len());
        if running.is_empty() && inbox.stopping.get() && inbox.queue.borrow().is_empty() {
            break;
        }
        inbox.changed.arm();
        if running.len() < concurrency && !inbox.queue.borrow().is_empty() {
            continue;
        }
        if running.is_empty() {
            std::future::poll_fn(|cx| inbox.changed.poll_taken(cx)).await;
            continue;
        }
        let next = std::future::poll_fn(|cx| match running.poll_next_unpin(cx) {
            Poll::Ready(ended) => Poll::Ready(ended),
            Poll::Pending => inbox.changed.poll_taken(cx).map(|()| None),
        });
        if let Some((id, ended)) = next.await {
            inbox.running.borrow_mut().remove(&id);
            report(link, id, &ended);
            // The next task may start at once: its first poll hands this end to the outbox,
            // where the writer (or, if that task holds the loop, the flusher) sends it.
        }
    }
    // Drained after the pill: say goodbye, accept no more outputs, let the writer flush.
    encode_header(
        &mut link.outgoing.borrow_mut(),
        &ToParent::Bye,
        link.max_frame,
    )
    .expect("small frame");
    link.close();
    std::future::pending().await
}

async fn run_one<W: Worker>(
    worker: Rc<W>,
    link: Rc<Link>,
    id: TaskId,
    task: Result<W::Task, String>,
    timeout: Option<Duration>,
    cancel: AbortRegistration,
) -> (TaskId, Ended) {
    let task = match task {
        Ok(task) => task,
        Err(message) => return (id, Ended::Codec(message)),
    };
    let runtime = link.runtime.clone();
    let link_own_process = link.own_process;
    let ctx = Context::new(link.clone(), Some(id));
    let mut run = InTask {
        task: id,
        future: AssertUnwindSafe(worker.process(task, &ctx)).catch_unwind(),
    };
    // What earlier tasks produced goes to the outbox before this one runs: should it hold
    // the loop, the flusher sends it.
    let run = std::future::poll_fn(|cx| {
        link.hand_over();
        link.outbox.send_after_long_turn();
        run.poll_unpin(cx)
    });
    let limited = async {
        match timeout {
            None => Some(run.await),
            // Dropping the task's future cancels it at its current await.
            Some(limit) => match select(pin!(run), runtime.sleep(limit)).await {
                Either::Left((outcome, _)) => Some(outcome),
                Either::Right(_) => None,
            },
        }
    };
    let outcome = Abortable::new(limited, cancel).await;
    // Outputs a clone of its context emits from now on would reach the parent after its end.
    ctx.end_task();
    let Ok(outcome) = outcome else {
        return (id, Ended::Cancelled);
    };
    let ended = match outcome {
        Some(Ok(Ok(()))) => Ended::Completed,
        Some(Ok(Err(e))) => encode_error(&e),
        Some(Err(panic)) => {
            let message = panic_message(&*panic);
            // A worker with a process of its own forwards panics from its panic hook; one
            // that is a thread of the parent leaves the parent's hook alone and says it here.
            if !link_own_process {
                observe::forward_for(
                    id,
                    1,
                    "looppool::panic",
                    &format!("task panicked: {message}"),
                );
            }
            Ended::Panicked(message)
        }
        None => Ended::TimedOut(timeout.unwrap_or_default()),
    };
    (id, ended)
}

/// A task's error as the parent will decode it; its text if it cannot be sent.
fn encode_error<E: serde::Serialize + std::fmt::Display>(e: &E) -> Ended {
    let encoded = std::panic::catch_unwind(AssertUnwindSafe(|| postcard::to_stdvec(e)));
    match encoded {
        Ok(Ok(bytes)) if bytes.len() <= MESSAGE_LIMIT => Ended::Failed(bytes),
        Ok(Ok(bytes)) => Ended::Codec(format!(
            "the task's error encodes to {} bytes, over the limit of {MESSAGE_LIMIT}: {e}",
            bytes.len()
        )),
        Ok(Err(why)) => Ended::Codec(format!("cannot encode the task's error ({why}): {e}")),
        Err(panic) => Ended::Codec(format!(
            "encoding the task's error panicked ({}): {e}",
            panic_message(&*panic)
        )),
    }
}

pub(super) fn report(link: &Link, id: TaskId, ended: &Ended) {
    let outcome = match ended {
        Ended::Completed => WireOutcome::Completed,
        Ended::Failed(bytes) => WireOutcome::Failed(bytes),
        Ended::Codec(m) => WireOutcome::Codec(truncate(m)),
        Ended::Panicked(m) => WireOutcome::Panicked(truncate(m)),
        Ended::TimedOut(after) => WireOutcome::TimedOut(after.as_millis() as u64),
        Ended::Cancelled => WireOutcome::Cancelled,
    };
    let frame = ToParent::Done { task: id, outcome };
    encode_header(
        &mut link.outgoing.borrow_mut(),
        &frame,
        link.max_frame.max(HELLO_LIMIT),
    )
    .expect("a task end with a bounded message fits any frame limit");
    link.wake_writer.notify();
}
