//! A worker's event loop: handshake, init, then tasks in and outputs out until the poison pill.
//!
//! Four parts run on the worker's one thread, sharing state through `Rc`:
//! - the *reader* decodes frames from the parent: tasks go to the inbox, acknowledgements return
//!   result credit, the poison pill marks the inbox as closing;
//! - the *runner* (the `runner` module) starts inbox tasks while fewer than `concurrency` run,
//!   and reports each end;
//! - the *writer* sends every encoded frame (outputs, task ends, reports, log events) once the
//!   others have nothing left to do, so the frames of many short tasks share one write; a task
//!   that holds the loop has what came before it sent by the flusher thread (see [`outbox`]);
//! - the *ticker* times the loop with a periodic timer and sends heartbeats and reports.
//!
//! The loop ends when the runner has drained the inbox after the pill (it then says goodbye and
//! the writer flushes it), when the parent hangs up (end of file: the parent died, so do we), or
//! when the parent breaks the protocol.

use super::context::{Context, Link};
use super::observe::{self, Forwarding};
use super::outbox::{DirectSink, Outbox};
use super::runner::{report, run_loop, Ended};
use super::signal::Signal;
use super::turn::first_of;
use super::Worker;
use crate::error::{error_chain, panic_message};
use crate::protocol::{
    encode_header, rejection, split_body, truncate_to, FrameReader, Handshake, ToParent, ToWorker,
    HELLO_LIMIT, HELLO_READ_LIMIT, MESSAGE_LIMIT, PROTOCOL_VERSION,
};
use crate::runtime::{BoxIo, Runtime};
use crate::state::{IdMap, TaskId};
use event_listener::Event;
use futures_util::future::{AbortHandle, FutureExt};
use futures_util::{AsyncWrite, AsyncWriteExt};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Exit codes of a worker process.
pub(crate) mod exit_code {
    /// Drained after the poison pill, or the parent went away.
    pub(crate) const OK: i32 = 0;
    /// The handshake was refused.
    pub(crate) const HANDSHAKE: i32 = 2;
    /// The init hook failed.
    pub(crate) const INIT: i32 = 3;
    /// The parent broke the protocol or the link failed.
    pub(crate) const LINK: i32 = 4;
}

pub(super) fn truncate(message: &str) -> &str {
    truncate_to(message, MESSAGE_LIMIT)
}

/// How the loop ended.
pub(super) enum End {
    Drained,
    ParentGone,
    Link(String),
}

pub(super) struct Inbox<T> {
    pub(super) queue: RefCell<VecDeque<(TaskId, Result<T, String>)>>,
    /// How to cancel each running task.
    pub(super) running: RefCell<IdMap<AbortHandle>>,
    pub(super) stopping: Cell<bool>,
    pub(super) changed: Signal,
}

/// Runs worker `W` over `io` until the link ends; returns the process exit code.
///
/// `handshake` is given when it was already read (a re-executed process reads it before it
/// has a runtime, to learn which worker type to run); otherwise it is read here.
///
/// `sink`, when given, is a second way to write the link: a flusher thread sends through it
/// what a task holding the loop would otherwise hold back.
pub(crate) async fn serve<W: Worker>(
    io: BoxIo,
    sink: Option<DirectSink>,
    handshake: Option<Handshake>,
    runtime: Arc<dyn Runtime>,
) -> i32 {
    let (read_half, mut write_half) = futures_util::AsyncReadExt::split(io);
    let mut reader = FrameReader::new(read_half, HELLO_READ_LIMIT);
    let hs = match handshake {
        Some(hs) => hs,
        None => {
            let decoded = match reader.next().await {
                Ok(Some(body)) => Handshake::decode(body),
                Ok(None) => return exit_code::OK,
                Err(e) => Err(format!("cannot read the handshake: {e}")),
            };
            match decoded {
                Ok(hs) => hs,
                Err(reason) => {
                    let _ = write_all(&mut write_half, &rejection(&reason)).await;
                    eprintln!("looppool worker: {reason}");
                    return exit_code::HANDSHAKE;
                }
            }
        }
    };
    reader.set_max_frame(hs.max_frame);

    let link = Rc::new(Link {
        worker: hs.worker,
        pool_size: hs.pool_size,
        pool_name: hs.pool_name.clone(),
        max_frame: hs.max_frame,
        credit: Cell::new(hs.result_credit),
        credit_returned: Event::new(),
        outgoing: RefCell::new(Vec::new()),
        outbox: Arc::new(Outbox::default()),
        wake_writer: Signal::default(),
        closed: Cell::new(false),
        hang_up: Cell::new(false),
        stall_writer: Cell::new(false),
        own_process: hs.own_process,
        running: Cell::new(0),
        logs_dropped: Cell::new(0),
        runtime: runtime.clone(),
        config: hs.config.clone(),
    });
    if let Some(sink) = sink {
        link.outbox.start_flusher(sink);
    }
    // The flusher ends with the loop, however the loop ends.
    let _flusher = ShutOnDrop(link.outbox.clone());
    // Events (and, in a process of its own, panic messages) go to the parent from here on.
    let _forwarding = Forwarding::start(&link, hs.log_level);
    if hs.own_process && hs.log_level > 0 {
        observe::install_panic_hook();
    }

    let init_ctx = Context::new(link.clone(), None);
    let worker = match AssertUnwindSafe(W::init(&init_ctx)).catch_unwind().await {
        Ok(Ok(worker)) => Rc::new(worker),
        outcome => {
            let message = match outcome {
                Ok(Err(e)) => error_chain(&*e),
                Err(panic) => format!("panicked: {}", panic_message(&*panic)),
                Ok(Ok(_)) => unreachable!(),
            };
            let mut buf = Vec::new();
            let frame = ToParent::InitFailed {
                message: truncate(&message),
            };
            encode_header(&mut buf, &frame, HELLO_LIMIT).expect("bounded message");
            let _ = write_all(&mut write_half, &buf).await;
            return exit_code::INIT;
        }
    };
    {
        let mut ready = Vec::new();
        let frame = ToParent::Ready {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
        };
        encode_header(&mut ready, &frame, HELLO_LIMIT).expect("small frame");
        // Outputs the init hook emitted are already queued; the handshake answer goes first.
        link.outgoing.borrow_mut().splice(0..0, ready);
        link.wake_writer.notify();
    }

    let inbox = Rc::new(Inbox::<W::Task> {
        queue: RefCell::new(VecDeque::new()),
        running: RefCell::new(IdMap::default()),
        stopping: Cell::new(false),
        changed: Signal::default(),
    });

    let read = pin!(read_loop(&mut reader, &link, &inbox));
    let write = pin!(write_loop(&mut write_half, &link));
    let run = pin!(run_loop(
        worker,
        &link,
        &inbox,
        hs.concurrency,
        hs.task_timeout
    ));
    let beat = pin!(ticker(&link, &inbox, hs.heartbeat, hs.stats));
    // Polled in this order each turn: tasks that arrived start, then whatever they emitted
    // (and their ends) is written in the same turn, without waiting to be woken again.
    let end = first_of([read, beat, run, write]).await;
    link.close();
    match end {
        End::Drained | End::ParentGone => exit_code::OK,
        End::Link(reason) => {
            eprintln!("looppool worker {}: {reason}", hs.worker);
            exit_code::LINK
        }
    }
}

struct ShutOnDrop(Arc<Outbox>);

impl Drop for ShutOnDrop {
    fn drop(&mut self) {
        self.0.shut();
    }
}

async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

async fn read_loop<R, T>(reader: &mut FrameReader<R>, link: &Link, inbox: &Inbox<T>) -> End
where
    R: futures_io::AsyncRead + Unpin,
    T: serde::de::DeserializeOwned,
{
    loop {
        let body = match reader.next().await {
            Ok(Some(body)) => body,
            Ok(None) => return End::ParentGone,
            Err(e) => return End::Link(e.to_string()),
        };
        match split_body::<ToWorker<'_>>(body) {
            Ok((ToWorker::Task { id }, payload)) => {
                let task = postcard::from_bytes::<T>(payload)
                    .map_err(|e| format!("the worker cannot decode the task: {e}"));
                inbox.queue.borrow_mut().push_back((id, task));
                inbox.changed.notify();
            }
            Ok((ToWorker::Ack { n }, _)) => link.add_credit(n as usize),
            Ok((ToWorker::Stop, _)) => {
                inbox.stopping.set(true);
                inbox.changed.notify();
            }
            Ok((ToWorker::Cancel { id }, _)) => {
                let mut queue = inbox.queue.borrow_mut();
                if let Some(at) = queue.iter().position(|(queued, _)| *queued == id) {
                    // Not started: it ends here.
                    queue.remove(at);
                    drop(queue);
                    report(link, id, &Ended::Cancelled);
                    inbox.changed.notify();
                } else if let Some(running) = inbox.running.borrow().get(&id) {
                    // Dropped at its current await; the run loop reports it.
                    running.abort();
                }
            }
            Ok((ToWorker::Hello { .. }, _)) => return End::Link("a second handshake".into()),
            Err(e) => return End::Link(format!("malformed frame from the parent: {e}")),
        }
    }
}

/// Times the loop with a periodic timer: how late it fires is the loop's lag. Every tick tells
/// the parent the loop is turning (when heartbeats are on); every `stats` it also reports what
/// the worker measured of itself. It never ends.
async fn ticker<T>(
    link: &Link,
    inbox: &Inbox<T>,
    heartbeat: Option<Duration>,
    stats: Option<Duration>,
) -> End {
    let period = match (heartbeat, stats) {
        (None, None) => return std::future::pending().await,
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
    }
    .max(Duration::from_millis(10));
    let runtime = &link.runtime;
    let mut worst = Duration::ZERO;
    let mut last_report = runtime.now();
    loop {
        let before = runtime.now();
        runtime.sleep(period).await;
        let now = runtime.now();
        worst = worst.max(now.saturating_duration_since(before).saturating_sub(period));
        if link.closed.get() {
            continue;
        }
        let report = stats.filter(|every| {
            now.saturating_duration_since(last_report) >= every.saturating_sub(period / 2)
        });
        let frame = match report {
            Some(_) => {
                let queued = inbox.queue.borrow().len();
                let measured = observe::sample(link, worst, queued);
                worst = Duration::ZERO;
                last_report = now;
                ToParent::Stats(measured)
            }
            None if heartbeat.is_some() => ToParent::Alive,
            None => continue,
        };
        encode_header(&mut link.outgoing.borrow_mut(), &frame, link.max_frame)
            .expect("small frame");
        link.wake_writer.notify();
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(w: &mut W, link: &Link) -> End {
    loop {
        // Lowered before the look: whatever is staged after it raises the signal again.
        link.wake_writer.arm();
        link.hand_over();
        if link.outbox.has_unsent() {
            let sent = std::future::poll_fn(|cx| link.outbox.poll_send(w, cx)).await;
            if let Err(e) = sent {
                return if e.kind() == std::io::ErrorKind::BrokenPipe {
                    End::ParentGone
                } else {
                    End::Link(format!("cannot write to the parent: {e}"))
                };
            }
            if link.stall_writer.get() {
                // Fault injection: what was written stays the last thing the parent reads.
                return std::future::pending().await;
            }
            continue;
        }
        if link.hang_up.get() {
            return End::ParentGone;
        }
        if link.closed.get() {
            return End::Drained;
        }
        std::future::poll_fn(|cx| link.wake_writer.poll_taken(cx)).await;
    }
}
