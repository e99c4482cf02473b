//! What a worker sends its parent: the bytes bound for the link, and the flusher thread that
//! sends them when the worker's loop cannot.
//!
//! The loop encodes frames on a buffer of its own ([`Link::outgoing`](super::context::Link)),
//! hands them to the [`Outbox`] before it polls a task, and writes the outbox when it has
//! nothing left to run. So the outputs and ends of many short tasks leave in one write, not one
//! write each. A task that holds the loop without yielding (CPU-bound work) would then hold
//! back everything its predecessors produced; the flusher, a thread that sleeps most of the
//! time, sees bytes that have waited a whole [`FLUSH_PERIOD`] and sends them itself. And when
//! nothing was written for a [`LONG_TURN`], the tasks are long: the loop then sends what waits
//! before it polls the next task, so a long task's end does not wait for the flusher behind a
//! CPU-bound successor (nor does the flusher tick through a stream of long tasks).
//!
//! Both write under one lock, from the same buffer, so the bytes leave in order whoever sends
//! them.

use crate::pipe::PipeSender;
use futures_util::AsyncWrite;
use std::io;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long bytes may wait in the outbox while the loop is busy before the flusher sends them:
/// they reach the parent within about twice this.
pub(crate) const FLUSH_PERIOD: Duration = Duration::from_millis(1);

/// Periods with nothing handed over after which the flusher sleeps until woken.
const IDLE_PERIODS: u32 = 3;

/// How long the loop may run tasks with nothing written before it writes what waits itself,
/// before it polls another task. Short tasks share writes well within it; a task that ran this
/// long already has its end sent before the next one starts, which may hold the loop.
pub(crate) const LONG_TURN: Duration = Duration::from_micros(200);

/// Where the flusher writes: the link itself, without going through the loop's runtime.
#[derive(Debug)]
pub(crate) enum DirectSink {
    /// A worker process's socket, duplicated.
    Socket(UnixStream),
    /// A worker thread's in-memory pipe.
    Pipe(PipeSender),
}

impl DirectSink {
    /// Writes what fits now; `WouldBlock` when nothing does.
    fn try_send(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            DirectSink::Socket(s) => {
                use nix::sys::socket::{send, MsgFlags};
                use std::os::fd::AsRawFd;
                let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
                send(s.as_raw_fd(), bytes, flags).map_err(io::Error::from)
            }
            DirectSink::Pipe(p) => p.try_send(bytes),
        }
    }
}

#[derive(Debug)]
struct Bytes {
    buf: Vec<u8>,
    /// How much of `buf` is already sent.
    sent: usize,
    /// Times bytes were handed over, and times the outbox was emptied: what the flusher watches
    /// for progress.
    handed: u64,
    emptied: u64,
    /// Nothing more is taken: fault injection stalls the link after what it holds.
    sealed: bool,
    /// The worker is gone; the flusher ends.
    shut: bool,
    /// When the outbox was last empty after a send: how long the loop has gone unwritten.
    emptied_at: Instant,
}

impl Default for Bytes {
    fn default() -> Self {
        Bytes {
            buf: Vec::new(),
            sent: 0,
            handed: 0,
            emptied: 0,
            sealed: false,
            shut: false,
            emptied_at: Instant::now(),
        }
    }
}

impl Bytes {
    fn unsent(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    fn advance(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
            self.emptied += 1;
            self.emptied_at = Instant::now();
        }
    }
}

/// The bytes bound for the parent, shared by the worker's loop and its flusher.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    bytes: Mutex<Bytes>,
    /// The flusher's thread, once started.
    flusher: OnceLock<Thread>,
    /// Set while the flusher sleeps until woken.
    flusher_asleep: AtomicBool,
    /// The flusher's way to the link, which the loop also uses after a long turn.
    sink: OnceLock<Arc<DirectSink>>,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Bytes> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `staged` (emptying it) to what is to be sent.
    pub(crate) fn hand_over(&self, staged: &mut Vec<u8>) {
        if staged.is_empty() {
            return;
        }
        {
            let mut bytes = self.lock();
            if bytes.sealed {
                staged.clear();
                return;
            }
            if bytes.buf.is_empty() {
                std::mem::swap(&mut bytes.buf, staged);
            } else {
                bytes.buf.append(staged);
            }
            bytes.handed += 1;
        }
        if self.flusher_asleep.load(Ordering::SeqCst) {
            if let Some(t) = self.flusher.get() {
                t.unpark();
            }
        }
    }

    /// Sends what waits through the direct sink when nothing was written for [`LONG_TURN`]:
    /// the tasks the loop runs are long, and one write per task costs little beside them.
    pub(crate) fn send_after_long_turn(&self) {
        let Some(sink) = self.sink.get() else {
            return;
        };
        let mut bytes = self.lock();
        if bytes.unsent().is_empty() || bytes.emptied_at.elapsed() < LONG_TURN {
            return;
        }
        send_now(&mut bytes, sink);
    }

    /// Whether bytes wait to be sent.
    pub(crate) fn has_unsent(&self) -> bool {
        self.unsent_len() > 0
    }

    /// How many bytes wait to be sent.
    pub(crate) fn unsent_len(&self) -> usize {
        self.lock().unsent().len()
    }

    /// Writes everything waiting through the loop's own writer `w`.
    pub(crate) fn poll_send<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let mut bytes = self.lock();
        while !bytes.unsent().is_empty() {
            match Pin::new(&mut *w).poll_write(cx, bytes.unsent()) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => bytes.advance(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        drop(bytes);
        Pin::new(w).poll_flush(cx)
    }

    /// What the outbox holds is the last it sends: later hand-overs are dropped.
    pub(crate) fn seal(&self) {
        self.lock().sealed = true;
    }

    /// Ends the flusher: the loop has stopped using the link.
    pub(crate) fn shut(&self) {
        self.lock().shut = true;
        if let Some(t) = self.flusher.get() {
            t.unpark();
        }
    }

    /// Starts the flusher on a thread of its own. Without one (`spawn` fails), bytes wait for
    /// the loop, as they would while the loop holds them.
    pub(crate) fn start_flusher(self: &Arc<Self>, sink: DirectSink) {
        let sink = Arc::new(sink);
        let _ = self.sink.set(sink.clone());
        let outbox = self.clone();
        let started = std::thread::Builder::new()
            .name("looppool-flush".into())
            .stack_size(64 * 1024)
            .spawn(move || outbox.flush_until_shut(&sink));
        if let Ok(handle) = started {
            let _ = self.flusher.set(handle.thread().clone());
        }
    }

    fn flush_until_shut(&self, sink: &DirectSink) {
        // The progress marks seen at the last look while bytes were waiting.
        let mut waiting_since: Option<(u64, u64)> = None;
        let mut idle = 0;
        let mut last_handed = 0;
        loop {
            if idle >= IDLE_PERIODS {
                self.flusher_asleep.store(true, Ordering::SeqCst);
                let nothing = {
                    let bytes = self.lock();
                    !bytes.shut && bytes.handed == last_handed
                };
                if nothing {
                    std::thread::park();
                }
                self.flusher_asleep.store(false, Ordering::SeqCst);
                idle = 0;
            } else {
                std::thread::park_timeout(FLUSH_PERIOD);
            }
            let mut bytes = self.lock();
            if bytes.shut {
                return;
            }
            let marks = (bytes.handed, bytes.emptied);
            if bytes.unsent().is_empty() {
                waiting_since = None;
                idle = if marks.0 == last_handed { idle + 1 } else { 0 };
                last_handed = marks.0;
                continue;
            }
            idle = 0;
            last_handed = marks.0;
            // Bytes were waiting at the last look too, and the loop has sent nothing since:
            // it is busy, so they go now.
            if waiting_since.is_some_and(|(_, emptied)| emptied == marks.1) {
                send_now(&mut bytes, sink);
            }
            waiting_since = Some((bytes.handed, bytes.emptied));
        }
    }
}

/// Sends what fits now through `sink`.
fn send_now(bytes: &mut Bytes, sink: &DirectSink) {
    while !bytes.unsent().is_empty() {
        match sink.try_send(bytes.unsent()) {
            Ok(n) if n > 0 => bytes.advance(n),
            // Full, closed or broken: the loop's writer sees to it when it runs.
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn connected() -> (Arc<Outbox>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let outbox = Arc::new(Outbox::default());
        outbox.start_flusher(DirectSink::Socket(ours));
        (outbox, theirs)
    }

    #[test]
    fn bytes_the_loop_does_not_send_are_sent_by_the_flusher_in_order() {
        let (outbox, mut theirs) = connected();
        // Handed over in pieces, as a busy loop would, and never sent by it.
        for piece in [&b"first "[..], b"second ", b"third"] {
            outbox.hand_over(&mut piece.to_vec());
        }
        let mut got = [0; 18];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"first second third");
        // Once the flusher sleeps until woken, a later hand-over wakes it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !outbox.flusher_asleep.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the flusher never slept"
            );
            std::thread::yield_now();
        }
        outbox.hand_over(&mut b"again".to_vec());
        let mut got = [0; 5];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"again");
        outbox.shut();
    }

    #[test]
    fn after_a_long_turn_the_loop_sends_what_waits_itself() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.set_nonblocking(true).unwrap();
        // The sink, without a flusher thread: only the loop's own call sends.
        let outbox = Outbox::default();
        let _ = outbox.sink.set(Arc::new(DirectSink::Socket(ours)));
        // Written a moment ago: short tasks share the next write.
        outbox.lock().emptied_at = Instant::now();
        outbox.hand_over(&mut b"end of a short task".to_vec());
        outbox.send_after_long_turn();
        let err = theirs.read(&mut [0; 64]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        // Nothing written for longer than a long turn: sent before the next task is polled.
        outbox.lock().emptied_at = Instant::now() - LONG_TURN * 2;
        outbox.send_after_long_turn();
        let mut got = [0; 19];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"end of a short task");
        assert!(!outbox.has_unsent());
    }

    #[test]
    fn after_a_seal_later_bytes_are_dropped() {
        let (outbox, mut theirs) = connected();
        outbox.hand_over(&mut b"last".to_vec());
        outbox.seal();
        outbox.hand_over(&mut b"never".to_vec());
        let mut got = [0; 4];
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"last");
        theirs.set_read_timeout(Some(FLUSH_PERIOD * 20)).unwrap();
        let mut more = [0; 1];
        let err = theirs.read(&mut more).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        outbox.shut();
    }
}
