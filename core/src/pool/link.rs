//! One worker's link in the parent, once its handshake is done: a reader (run by the worker's
//! supervisor) and a writer task.

use super::frames::Batch;
use super::incarnation::Linked;
use super::shared::{Inner, Payload, Shared};
use super::write_now::encode_transmit;
use crate::launch::{Killer, Reaper};
use crate::protocol::{encode_header_before_raw, FrameError, LinkReader, LinkWriter, ToWorker};
use crate::runtime::yield_now;
use crate::state::{Transmit, WorkerStatus};
use futures_util::future::{select, Either};
use futures_util::AsyncWriteExt;
use serde::de::DeserializeOwned;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// Task payloads at least this large are written from their own buffer rather than copied into
/// the writer's.
const DIRECT_WRITE: usize = 64 * 1024;

/// How long a worker that said goodbye may take to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// How long the link of a worker whose process exited is still read after its last frame (for
/// what it wrote before it exited) when something else holds it open...
const EXIT_DRAIN: Duration = Duration::from_millis(250);

/// ...and how long at most.
const EXIT_DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Runs worker `worker`'s incarnation `generation` until it is gone: its writer and (when the
/// pool watches for stalled loops, blocked loops or memory growth) its monitor run as tasks of
/// their own; the reader runs here and ends by reporting the exit.
pub(crate) async fn run<O: DeserializeOwned + Send + 'static>(
    shared: &Arc<Shared<O>>,
    worker: usize,
    generation: u64,
    linked: Linked,
) {
    let runtime = shared.runtime.clone();
    shared.seen(worker);
    let Linked {
        reader,
        writer,
        killer,
        reaper,
        ..
    } = linked;
    let write = write_loop(shared.clone(), worker, generation, writer);
    runtime.spawn(Box::pin(write));
    let settings = &shared.settings;
    if settings.watch_stalls
        || settings.blocked_threshold.is_some()
        || (settings.watch_memory && settings.processes)
    {
        runtime.spawn(Box::pin(super::monitor::monitor(
            shared.clone(),
            worker,
            generation,
        )));
    }
    read_loop(shared.clone(), worker, generation, reader, killer, reaper).await;
}

/// What ended a link's read loop.
enum Ending {
    /// The worker closed its end, or its process exited: an orderly end if it said goodbye.
    Closed,
    /// A protocol violation, a broken frame or an i/o error.
    Broken(String),
}

/// One step of a link's read loop.
enum Step<'a> {
    Frame(Result<Option<&'a [u8]>, FrameError>),
    /// The frame-deadline timer fired.
    Tick,
    /// The worker's process exited.
    Exited,
}

async fn read_loop<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    worker: usize,
    generation: u64,
    mut reader: LinkReader,
    killer: Killer,
    reaper: Reaper,
) {
    reader.set_max_frame(shared.settings.max_frame);
    // Declared after `reader`, so dropped before it: the entry forgets the descriptor while
    // the socket is still open, however this future ends.
    let mut link_fd = LinkFd {
        shared: &shared,
        worker,
        generation,
        taken: false,
    };
    let runtime = shared.runtime.clone();
    let frame_timeout = shared.settings.frame_timeout;
    // Death is seen through the process as well as the link: a program or a forked child the
    // worker started may hold the link open after the worker is gone.
    let mut exited = reaper.exited(&runtime);
    let mut process_gone = false;
    let mut tick = runtime.sleep(frame_timeout);
    // Bytes read by the last tick: a frame begun and no byte read over a whole period is a stall.
    let mut received_at_tick = 0;
    // When the process was seen to exit, for the bound on reading what it left.
    let mut gone_at = None;
    // The frames of one read are handled as a batch: one clock reading, one wake-up of
    // waiting submitters.
    let mut batch = Batch {
        now: runtime.now(),
        room_freed: false,
        transmit_due: false,
    };
    let mut batch_begins = true;
    let ending = loop {
        let step = {
            let mut next = pin!(reader.next());
            poll_fn(|cx| {
                if let Poll::Ready(r) = next.as_mut().poll(cx) {
                    return Poll::Ready(Step::Frame(r));
                }
                if tick.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Step::Tick);
                }
                if !process_gone && exited.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Step::Exited);
                }
                Poll::Pending
            })
            .await
        };
        match step {
            Step::Frame(Ok(Some(body))) => {
                if batch_begins {
                    batch.now = runtime.now();
                    shared.seen_at(worker, batch.now);
                }
                let handled = handle_frame_safely(&shared, worker, body, &mut batch);
                // The batch ends with the frames buffered: the next one needs a read.
                batch_begins = !reader.has_frame();
                if (batch_begins || handled.is_err()) && batch.room_freed {
                    batch.room_freed = false;
                    shared.room_freed(worker);
                }
                if (batch_begins || handled.is_err()) && batch.transmit_due {
                    batch.transmit_due = false;
                    shared.wake_writer(worker);
                }
                if let Err(e) = handled {
                    break Ending::Broken(e);
                }
                if let Some(gone_at) = gone_at {
                    // Read on while frames keep coming, within a bound: something else may
                    // hold the link and write to it forever.
                    if runtime.now().saturating_duration_since(gone_at) > EXIT_DRAIN_LIMIT {
                        break Ending::Closed;
                    }
                    tick = runtime.sleep(EXIT_DRAIN);
                }
            }
            Step::Frame(Ok(None)) => break Ending::Closed,
            Step::Frame(Err(FrameError::Io(e)))
                if e.kind() == std::io::ErrorKind::ConnectionReset
                    && shared.lock().state.said_goodbye(worker) =>
            {
                // It exited with our last acknowledgements unread, after its goodbye: Linux
                // then reports a reset instead of the end of the stream. Orderly all the same.
                break Ending::Closed;
            }
            Step::Frame(Err(e)) => break Ending::Broken(e.to_string()),
            Step::Exited => {
                // What it wrote before it exited is in the socket already; read that, then
                // end the link whoever else holds it.
                process_gone = true;
                gone_at = Some(runtime.now());
                tick = runtime.sleep(EXIT_DRAIN);
            }
            Step::Tick if process_gone => break Ending::Closed,
            Step::Tick => {
                let (pending, received) = (reader.pending_bytes(), reader.received());
                if pending > 0 && received == received_at_tick {
                    break Ending::Broken(format!(
                        "a frame stopped half-way: {pending} bytes of it arrived, then nothing \
                         for {frame_timeout:?} (the frame timeout)"
                    ));
                }
                received_at_tick = received;
                tick = runtime.sleep(frame_timeout);
            }
        }
    };
    let cause = match ending {
        Ending::Closed => None,
        Ending::Broken(cause) => {
            if shared.lock().workers[worker].kill_cause.is_some() {
                // The parent killed it; a broken link is what that looks like.
                tracing::debug!(pool = %shared.settings.name, worker, "the link to worker {worker} ended after it was killed: {cause}");
            } else {
                tracing::error!(pool = %shared.settings.name, worker, "ending the link to worker {worker}: {cause}");
            }
            Some(cause)
        }
    };
    // A worker that said goodbye is exiting by itself; anything else that ends a link leaves a
    // process that is useless at best, so it is killed before it is reaped.
    let said_goodbye = cause.is_none() && shared.lock().state.said_goodbye(worker);
    if !said_goodbye {
        killer.kill();
    }
    // Whoever else holds the link (a program the worker started) must not keep our writer
    // waiting on it. The descriptor leaves the worker's entry now, while our reader still holds
    // it open: once both halves are dropped its number may be reused by a new link, which a
    // stale entry would make a forked child close and a submitter write to.
    if let Some(fd) = link_fd.take() {
        shut_down(fd);
    }
    drop(reader);
    let mut reaper = reaper;
    let exit = if said_goodbye {
        // It drained and is exiting by itself; one that lingers in its exit is killed.
        let reaped = {
            let reap = pin!(reaper.reap(&*shared.runtime));
            match select(reap, shared.runtime.sleep(EXIT_GRACE)).await {
                Either::Left((exit, _)) => Some(exit),
                Either::Right(_) => None,
            }
        };
        match reaped {
            Some(exit) => exit,
            None => {
                tracing::warn!(pool = %shared.settings.name, worker, "worker {worker} said goodbye but did not exit within {EXIT_GRACE:?}; killing it");
                killer.kill();
                reaper.reap(&*shared.runtime).await
            }
        }
    } else {
        reaper.reap(&*shared.runtime).await
    };
    shared.worker_exited(worker, generation, exit, cause, said_goodbye);
}

/// The worker entry's hold on a link: its descriptor number, which forked replacements close
/// and which must not name a number reused by another socket, and the submitters' handle on
/// the socket, which keeps it open. Taken when the link ends, and when the reader's future is
/// dropped before that (the runtime shut down, or a panic ended the task), so that the worker
/// sees its link close once the link's tasks are gone.
struct LinkFd<'a, O> {
    shared: &'a Shared<O>,
    worker: usize,
    generation: u64,
    taken: bool,
}

impl<O> LinkFd<'_, O> {
    /// Removes the descriptor (and whatever a submitter left unsent on it) from the entry,
    /// unless a later incarnation owns the entry by now.
    fn take(&mut self) -> Option<std::os::fd::RawFd> {
        self.taken = true;
        let mut inner = self.shared.lock();
        if inner.state.generation(self.worker) != self.generation {
            return None;
        }
        let entry = &mut inner.workers[self.worker];
        entry.carry.clear();
        entry.sender = None;
        entry.link_fd.take()
    }
}

impl<O> Drop for LinkFd<'_, O> {
    fn drop(&mut self) {
        if !self.taken {
            self.take();
        }
    }
}

/// Handles one frame; a panic while doing so (a user's `Deserialize`, say) ends this link with
/// an error rather than the task that reads it.
fn handle_frame_safely<O: DeserializeOwned + Send + 'static>(
    shared: &Arc<Shared<O>>,
    worker: usize,
    body: &[u8],
    batch: &mut Batch,
) -> Result<(), String> {
    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        shared.handle_frame(worker, body, batch)
    }));
    handled.unwrap_or_else(|panic| {
        Err(format!(
            "handling a frame from worker {worker} panicked: {}",
            super::frames::panic_text(&*panic)
        ))
    })
}

/// Shuts a socket down both ways, so that a write blocked on it fails at once.
fn shut_down(fd: std::os::fd::RawFd) {
    // The descriptor stays open (our writer half still owns it) until the writer ends.
    let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
}

async fn write_loop<O>(
    shared: Arc<Shared<O>>,
    worker: usize,
    generation: u64,
    mut writer: LinkWriter,
) {
    let max_frame = shared.settings.max_frame;
    let mut buf = Vec::new();
    let mut transmits: Vec<Transmit<Payload>> = Vec::new();
    // Large payloads, with where in `buf` each goes: written from their own buffer, not copied.
    let mut direct: Vec<(usize, Payload)> = Vec::new();
    let mut deferred = false;
    loop {
        let lane = &shared.lanes[worker];
        let listener = lane.writer.listen();
        {
            let mut inner = shared.lock();
            let Inner { state, workers, .. } = &mut *inner;
            let gone = matches!(
                state.status(worker),
                WorkerStatus::Exited | WorkerStatus::Replacing
            );
            // A writer of a dead incarnation leaves the flag alone: it belongs to its successor.
            if state.generation(worker) != generation || gone {
                return;
            }
            // What a submitter began to write goes first (`buf` is empty here).
            let carry = &mut workers[worker].carry;
            buf.extend_from_slice(carry);
            carry.clear();
            transmits.extend(std::iter::from_fn(|| state.poll_transmit(worker)));
            // Raised only by a look that found nothing, so that a submitter seeing it raised
            // knows this writer has nothing in hand; whatever is queued after this look wakes
            // the listener taken before it.
            let idle = transmits.is_empty() && buf.is_empty();
            lane.writer_may_wait.store(idle, Ordering::SeqCst);
        }
        // Acknowledgements alone can wait one turn of the loop: a task for this worker may
        // follow in the same turn and share the write, and a task for another worker goes
        // out first instead of queueing behind them. The flag stays lowered meanwhile.
        let acks_only = buf.is_empty()
            && !transmits.is_empty()
            && transmits.iter().all(|t| matches!(t, Transmit::Ack(_)));
        if acks_only && !deferred {
            deferred = true;
            yield_now().await;
            continue;
        }
        deferred = false;
        // Encoded outside the lock: payloads may be large, and every submitter takes it.
        for transmit in transmits.drain(..) {
            let encoded = match transmit {
                Transmit::Task { id, payload } if payload.len() >= DIRECT_WRITE => {
                    let header = ToWorker::Task { id };
                    let encoded =
                        encode_header_before_raw(&mut buf, &header, payload.len(), max_frame);
                    direct.push((buf.len(), payload));
                    encoded
                }
                transmit => encode_transmit(&mut buf, transmit, max_frame),
            };
            // Task sizes were checked when they were submitted.
            encoded.expect("a queued frame fits the frame limit");
        }
        if buf.is_empty() {
            listener.await;
            continue;
        }
        let written = async {
            let mut at = 0;
            for (offset, payload) in direct.drain(..) {
                writer.write_all(&buf[at..offset]).await?;
                writer.write_all(&payload).await?;
                at = offset;
            }
            writer.write_all(&buf[at..]).await?;
            writer.flush().await
        };
        if written.await.is_err() {
            // The reader sees the same broken link and does the clean-up.
            return;
        }
        buf.clear();
    }
}
