//! How a task's end reaches its handle: one small shared slot per task, which also counts how
//! many times the task was sent.
//!
//! A oneshot channel of the whole result plus a separate attempt counter took two allocations
//! per task, one of them too large for the allocator's fast bins; the slot takes one, and
//! boxes an error only when there is one.

use crate::error::RawTaskError;
use futures_util::task::AtomicWaker;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

const OPEN: u8 = 0;
const ENDED: u8 = 1;
/// The sender was dropped without an end: the pool went away.
const ABANDONED: u8 = 2;

struct Slot {
    attempts: AtomicU32,
    state: AtomicU8,
    /// The task's error, if it ended with one; written before `state` becomes `ENDED`.
    error: Mutex<Option<Box<RawTaskError>>>,
    waker: AtomicWaker,
}

/// A task's end and attempt count, as its pending entry holds them.
pub(crate) struct EndSender(Arc<Slot>);

/// The handle's side of [`EndSender`].
pub(crate) struct EndReceiver(Arc<Slot>);

/// The pool went away before the task ended.
#[derive(Debug)]
pub(crate) struct Abandoned;

/// A new slot: its two sides.
pub(crate) fn end_slot() -> (EndSender, EndReceiver) {
    let slot = Arc::new(Slot {
        attempts: AtomicU32::new(0),
        state: AtomicU8::new(OPEN),
        error: Mutex::new(None),
        waker: AtomicWaker::new(),
    });
    (EndSender(slot.clone()), EndReceiver(slot))
}

impl EndSender {
    /// Ends the task with `result`, waking its handle.
    pub(crate) fn send(self, result: Result<(), RawTaskError>) {
        if let Err(e) = result {
            *self.0.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(e));
        }
        self.0.state.store(ENDED, Ordering::Release);
        self.0.waker.wake();
    }

    /// One more send of the task to a worker; returns the count.
    pub(crate) fn sent_again(&self) -> u32 {
        self.0.attempts.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// How many times the task was sent.
    pub(crate) fn attempts(&self) -> u32 {
        self.0.attempts.load(Ordering::Relaxed)
    }
}

impl Drop for EndSender {
    fn drop(&mut self) {
        let abandoned = self
            .0
            .state
            .compare_exchange(OPEN, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if abandoned {
            self.0.waker.wake();
        }
    }
}

impl EndReceiver {
    /// The task's end, once it came.
    pub(crate) fn poll_end(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Result<(), RawTaskError>, Abandoned>> {
        let mut state = self.0.state.load(Ordering::Acquire);
        if state == OPEN {
            self.0.waker.register(cx.waker());
            state = self.0.state.load(Ordering::Acquire);
        }
        match state {
            OPEN => Poll::Pending,
            ENDED => {
                // Cloned, not taken: a handle polled again after it resolved (a caller's bug)
                // must not turn a failure into a success.
                let error = self.0.error.lock().unwrap_or_else(|p| p.into_inner());
                Poll::Ready(Ok(error.as_deref().cloned().map_or(Ok(()), Err)))
            }
            _ => Poll::Ready(Err(Abandoned)),
        }
    }

    /// How many times the task was sent.
    pub(crate) fn attempts(&self) -> u32 {
        self.0.attempts.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TaskError;
    use futures_util::task::noop_waker_ref;

    #[test]
    fn an_end_an_error_and_an_abandoned_slot_each_reach_the_receiver() {
        let mut cx = Context::from_waker(noop_waker_ref());
        let (tx, mut rx) = end_slot();
        assert!(rx.poll_end(&mut cx).is_pending());
        assert_eq!((tx.sent_again(), tx.sent_again(), rx.attempts()), (1, 2, 2));
        tx.send(Ok(()));
        assert!(matches!(rx.poll_end(&mut cx), Poll::Ready(Ok(Ok(())))));

        let (tx, mut rx) = end_slot();
        tx.send(Err(TaskError::Cancelled));
        for _ in 0..2 {
            // The same answer however often it is asked.
            assert!(matches!(
                rx.poll_end(&mut cx),
                Poll::Ready(Ok(Err(TaskError::Cancelled)))
            ));
        }

        let (tx, mut rx) = end_slot();
        drop(tx);
        assert!(matches!(rx.poll_end(&mut cx), Poll::Ready(Err(Abandoned))));
    }
}
