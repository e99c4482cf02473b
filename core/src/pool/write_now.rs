//! Writing a task from its submitter to a quiet worker.
//!
//! A task for a worker that is quiet (it holds no other task and every output it emitted was
//! acknowledged) is written by its submitter, under the lock, straight to the link. Left to the
//! writer task, one frame costs a wake-up and a turn of the scheduler, and on async-io's
//! executors a turn of the reactor as well: that hop is a good part of a round trip's latency.
//!
//! The writer stays the only one to write whenever it has anything in hand. Its lane's
//! `writer_may_wait` flag says it has not: the writer raises it, under the lock, only when a look
//! at the state found nothing (after it wrote everything found before), and lowers it, under the
//! same lock, when a look found something. A submitter that sees it raised, under the lock, may
//! write. What the socket does not take at once stays in the worker's carry, which the writer
//! sends before anything else once it is woken.

use super::shared::{Inner, Payload, Shared};
use crate::protocol::{encode_header, encode_with_raw, EncodeError, ToWorker};
use crate::state::Transmit;
use nix::errno::Errno;
use nix::sys::socket::{send, MsgFlags};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;

/// Tasks up to this size may be written by their submitter, which copies them into a frame and
/// sends it under the lock; larger ones are left to the writer, which sends them outside it.
pub(crate) const WRITE_NOW_LIMIT: usize = 16 * 1024;

/// Appends the frame of `transmit` to `buf`.
pub(crate) fn encode_transmit(
    buf: &mut Vec<u8>,
    transmit: Transmit<Payload>,
    max_frame: usize,
) -> Result<(), EncodeError> {
    match transmit {
        Transmit::Task { id, payload } => {
            encode_with_raw(buf, &ToWorker::Task { id }, &payload, max_frame)
        }
        Transmit::Ack(n) => encode_header(buf, &ToWorker::Ack { n }, max_frame),
        Transmit::Stop => encode_header(buf, &ToWorker::Stop, max_frame),
        Transmit::Cancel { id } => encode_header(buf, &ToWorker::Cancel { id }, max_frame),
    }
}

impl<O> Shared<O> {
    /// Writes what is queued for `worker` now, if its writer has nothing in hand and the state
    /// says the worker is [quiet](crate::state::PoolState::quiet) but for the task just placed.
    /// Returns whether the writer need not be woken: everything went out, or the link is
    /// broken (its reader ends it).
    ///
    /// A worker in the middle of a stream of tasks gets them from its writer, many to a write:
    /// written one by one as they are placed, each would cost a system call on both sides.
    pub(crate) fn write_now(&self, inner: &mut Inner<O>, worker: usize) -> bool {
        let Inner { state, workers, .. } = inner;
        let entry = &mut workers[worker];
        let Some(fd) = entry.sender.as_ref().map(|s| s.as_raw_fd()) else {
            return false;
        };
        if !self.lanes[worker].writer_may_wait.load(Ordering::SeqCst)
            || !entry.carry.is_empty()
            || !state.quiet(worker)
        {
            return false;
        }
        let max_frame = self.settings.max_frame;
        while let Some(transmit) = state.poll_transmit(worker) {
            // Task sizes were checked when they were submitted.
            encode_transmit(&mut entry.carry, transmit, max_frame)
                .expect("a queued frame fits the frame limit");
        }
        send_carry(fd, &mut entry.carry)
    }
}

/// Sends what `carry` holds to `fd` without waiting, and keeps in it what the socket did not
/// take. Returns whether nothing is left for the writer: all of it went out, or the link is
/// broken (its reader sees the same and ends it; what was in it is dealt with as the worker's
/// exit says). Any other failure (say, the kernel short of buffers) leaves the bytes to the
/// writer, whose own write reports it.
fn send_carry(fd: RawFd, carry: &mut Vec<u8>) -> bool {
    let mut sent = 0;
    while sent < carry.len() {
        match send(
            fd,
            &carry[sent..],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => {}
            Err(Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN) => {
                carry.clear();
                return true;
            }
            Err(_) => break,
        }
    }
    carry.drain(..sent);
    carry.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// Fills `ours` until the socket takes nothing more, and returns how much it took.
    fn fill(ours: &UnixStream) -> usize {
        let block = vec![0u8; 4096];
        let mut filled = 0;
        loop {
            match send(ours.as_raw_fd(), &block, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => filled += n,
                Err(Errno::EAGAIN) => return filled,
                Err(e) => panic!("filling the socket: {e}"),
            }
        }
    }

    #[test]
    fn what_a_full_socket_does_not_take_is_kept_in_order_and_sent_once() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let filled = fill(&ours);
        let frames: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut carry = frames.clone();
        assert!(
            !send_carry(ours.as_raw_fd(), &mut carry),
            "a full socket took it all"
        );
        assert_eq!(carry, frames, "nothing was sent, so all of it is kept");

        // The peer reads the filler; the carry goes out over as many sends as room allows.
        let mut received = Vec::new();
        let mut chunk = vec![0u8; 8192];
        let mut left = filled;
        while left > 0 {
            let n = theirs.read(&mut chunk[..left.min(8192)]).unwrap();
            left -= n;
        }
        while !carry.is_empty() {
            let before = carry.len();
            send_carry(ours.as_raw_fd(), &mut carry);
            assert!(carry.len() <= before);
            let n = theirs.read(&mut chunk).unwrap();
            received.extend_from_slice(&chunk[..n]);
        }
        // Whatever is still in flight.
        theirs.set_nonblocking(true).unwrap();
        while let Ok(n) = theirs.read(&mut chunk) {
            received.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(received, frames, "every byte once, in order");
    }

    #[test]
    fn a_broken_link_leaves_nothing_for_the_writer() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        let mut carry = vec![1, 2, 3];
        assert!(send_carry(ours.as_raw_fd(), &mut carry));
        assert!(carry.is_empty());
    }
}
