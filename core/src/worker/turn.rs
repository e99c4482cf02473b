//! Runs the parts of a worker's loop (reader, ticker, runner, writer) as one future that ends
//! with the first part that ends.
//!
//! The parts wake each other all the time: a task read wakes the runner, a task ended wakes the
//! writer. Polled under one shared waker, each such wake-up woke the whole future while it was
//! being polled, and the runtime answered with another turn: on tokio, a look at the reactor
//! that cannot block (one more system call) and a poll of every part. Here each part has a
//! waker of its own; a part woken while the loop is being polled is polled again in the same
//! poll, and only a wake-up from outside (the link, a timer, another thread) wakes the loop.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// How many times round the parts one poll goes at most.
const MAX_ROUNDS: usize = 16;

/// The parts, polled in order each time round.
pub(crate) type Parts<'a, T> = [Pin<&'a mut dyn Future<Output = T>>; 4];

struct Shared {
    /// One bit per part woken since it was last polled.
    woken: AtomicU32,
    /// Whether the loop is being polled: wake-ups then need not wake it.
    polling: AtomicBool,
    outer: AtomicWaker,
}

struct PartWaker {
    bit: u32,
    shared: Arc<Shared>,
}

impl Wake for PartWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.woken.fetch_or(self.bit, Ordering::SeqCst);
        if !self.shared.polling.load(Ordering::SeqCst) {
            self.shared.outer.wake();
        }
    }
}

/// The first output of any of `parts`.
pub(crate) async fn first_of<T>(mut parts: Parts<'_, T>) -> T {
    let shared = Arc::new(Shared {
        woken: AtomicU32::new((1 << parts.len()) - 1),
        polling: AtomicBool::new(false),
        outer: AtomicWaker::new(),
    });
    let wakers: Vec<Waker> = (0..parts.len())
        .map(|i| {
            Waker::from(Arc::new(PartWaker {
                bit: 1 << i,
                shared: shared.clone(),
            }))
        })
        .collect();
    std::future::poll_fn(|cx| {
        shared.outer.register(cx.waker());
        shared.polling.store(true, Ordering::SeqCst);
        let mut rounds = 0;
        loop {
            let woken = shared.woken.swap(0, Ordering::SeqCst);
            if woken == 0 {
                shared.polling.store(false, Ordering::SeqCst);
                // A part woken from another thread after the swap and before the store.
                if shared.woken.load(Ordering::SeqCst) == 0 {
                    return Poll::Pending;
                }
                shared.polling.store(true, Ordering::SeqCst);
                continue;
            }
            if rounds == MAX_ROUNDS {
                // Parts that keep waking each other (or a task that yields in a loop) let the
                // runtime turn first: its reactor, its timers, its other tasks.
                shared.woken.fetch_or(woken, Ordering::SeqCst);
                shared.polling.store(false, Ordering::SeqCst);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            rounds += 1;
            for (i, part) in parts.iter_mut().enumerate() {
                if woken & (1 << i) == 0 {
                    continue;
                }
                let mut part_cx = Context::from_waker(&wakers[i]);
                if let Poll::Ready(out) = part.as_mut().poll(&mut part_cx) {
                    shared.polling.store(false, Ordering::SeqCst);
                    return Poll::Ready(out);
                }
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wakes::counting;
    use crate::worker::signal::Signal;
    use std::cell::Cell;

    #[test]
    fn parts_that_wake_each_other_run_in_one_poll_and_only_outside_wakes_count() {
        let outside = Signal::default();
        let (a_to_b, b_to_a) = (Signal::default(), Signal::default());
        let rounds = Cell::new(0);
        // `a` waits for the outside, then passes the turn to `b` and back, three times.
        let a = async {
            std::future::poll_fn(|cx| outside.poll_taken(cx)).await;
            for _ in 0..3 {
                a_to_b.notify();
                std::future::poll_fn(|cx| b_to_a.poll_taken(cx)).await;
                rounds.set(rounds.get() + 1);
            }
            "a"
        };
        let b = async {
            loop {
                std::future::poll_fn(|cx| a_to_b.poll_taken(cx)).await;
                b_to_a.notify();
            }
        };
        let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
        let mut idle1 = std::pin::pin!(std::future::pending::<&str>());
        let mut idle2 = std::pin::pin!(std::future::pending::<&str>());
        let parts: Parts<'_, &str> = [a.as_mut(), b.as_mut(), idle1.as_mut(), idle2.as_mut()];
        let mut all = std::pin::pin!(first_of(parts));
        let (wakes, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert!(all.as_mut().poll(&mut cx).is_pending());
        assert_eq!(wakes.count(), 0, "nothing woke the loop yet");
        outside.notify();
        assert_eq!(wakes.count(), 1, "a wake-up from outside");
        assert_eq!(all.as_mut().poll(&mut cx), Poll::Ready("a"));
        assert_eq!(rounds.get(), 3, "every hand-over ran within that one poll");
        assert_eq!(wakes.count(), 1, "and woke nothing outside");
    }

    #[test]
    fn a_part_that_always_wakes_itself_hands_the_thread_back() {
        let polls = Cell::new(0);
        let mut spinning = std::pin::pin!(std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            assert!(
                polls.get() < 100 * MAX_ROUNDS,
                "the loop never hands the thread back"
            );
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        }));
        let mut b = std::pin::pin!(std::future::pending::<()>());
        let mut c = std::pin::pin!(std::future::pending::<()>());
        let mut d = std::pin::pin!(std::future::pending::<()>());
        let parts: Parts<'_, ()> = [spinning.as_mut(), b.as_mut(), c.as_mut(), d.as_mut()];
        let mut all = std::pin::pin!(first_of(parts));
        let (wakes, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert!(all.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.get(), MAX_ROUNDS, "polled a bounded number of times");
        assert_eq!(wakes.count(), 1, "then the loop asked for another turn");
        assert!(all.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.get(),
            2 * MAX_ROUNDS,
            "and it is polled again on that turn"
        );
    }
}
