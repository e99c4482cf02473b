//! A wake-up between the parts of a worker's loop, which all run on one thread.
//!
//! `event_listener` allocates a listener and takes a lock on every wait and every notification
//! that finds one; on a worker's per-task path a flag and one stored waker do the same job.

use std::cell::{Cell, RefCell};
use std::task::{Context, Poll, Waker};

/// A flag set by [`notify`](Self::notify) and taken by a waiter. A notification that comes
/// while nobody waits is kept until the next [`poll_taken`](Self::poll_taken), so a waiter that
/// [`arm`](Self::arm)s before looking at what it waits for misses nothing.
#[derive(Default, Debug)]
pub(crate) struct Signal {
    raised: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    /// Raises the flag and wakes the waiter, if any.
    pub(crate) fn notify(&self) {
        self.raised.set(true);
        let waker = self.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Lowers the flag: what is raised from now on is a new notification.
    pub(crate) fn arm(&self) {
        self.raised.set(false);
    }

    /// Ready (and lowered) once the flag is raised; until then the task in `cx` is woken by
    /// the next notification.
    pub(crate) fn poll_taken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.replace(false) {
            return Poll::Ready(());
        }
        let mut waker = self.waker.borrow_mut();
        match &*waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wakes::counting;

    #[test]
    fn a_notification_before_the_wait_is_kept_and_one_during_it_wakes() {
        let (wakes, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let signal = Signal::default();
        signal.arm();
        signal.notify();
        assert!(signal.poll_taken(&mut cx).is_ready(), "kept until taken");
        assert!(signal.poll_taken(&mut cx).is_pending(), "taken once");
        signal.notify();
        assert_eq!(wakes.count(), 1, "the waiter is woken");
        signal.arm();
        assert!(signal.poll_taken(&mut cx).is_pending(), "armed: lowered");
    }
}
