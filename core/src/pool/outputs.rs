//! The pool's output stream: deliveries in arrival order, taken by any number of consumers.
//!
//! A queue under a lock, with the wakers of the consumers waiting on it: a delivery costs no
//! allocation once the queue has grown to the pool's working depth, where a general channel
//! allocated a block every few dozen deliveries and a listener for every wait.

use super::handle::Delivery;
use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct Queue<T> {
    state: Mutex<State<T>>,
    /// Numbers the consumers, so that each waits with one waker.
    consumers: AtomicU64,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// The consumers waiting for an item, by number.
    waiting: Vec<(u64, Waker)>,
}

impl<T> Queue<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side of the output stream. Public for transports only (`looppool-nats`).
#[doc(hidden)]
pub struct OutputSender<O>(Arc<Queue<Delivery<O>>>);

impl<O> fmt::Debug for OutputSender<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputSender")
            .field("queued", &self.0.lock().items.len())
            .finish()
    }
}

impl<O> Default for OutputSender<O> {
    fn default() -> Self {
        Self(Arc::new(Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
                waiting: Vec::new(),
            }),
            consumers: AtomicU64::new(0),
        }))
    }
}

impl<O> Drop for OutputSender<O> {
    /// The stream ends with the pool, however the pool ends: a consumer waiting for an output
    /// must not wait forever for a pool dropped without a finished `stop`.
    fn drop(&mut self) {
        self.close();
    }
}

impl<O> OutputSender<O> {
    /// A new output stream, with no consumer yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `delivery` for the consumers; once the stream is closed, drops it (which
    /// acknowledges it).
    pub fn send(&self, delivery: Delivery<O>) {
        let waiting = {
            let mut state = self.0.lock();
            if state.closed {
                drop(state);
                drop(delivery);
                return;
            }
            state.items.push_back(delivery);
            std::mem::take(&mut state.waiting)
        };
        // Every waiting consumer: one that is woken and then dropped without taking the item
        // must not leave it to a consumer that sleeps on.
        waiting.into_iter().for_each(|(_, w)| w.wake());
    }

    /// Ends the stream once what is queued was taken.
    pub fn close(&self) {
        let waiting = {
            let mut state = self.0.lock();
            state.closed = true;
            std::mem::take(&mut state.waiting)
        };
        waiting.into_iter().for_each(|(_, w)| w.wake());
    }

    /// A new consumer of the stream.
    pub fn subscribe(&self) -> Outputs<O> {
        Outputs::of(self.0.clone())
    }
}

/// The stream of outputs from every worker, in arrival order.
///
/// Clones share the stream: each output goes to one of them. Outputs of tasks submitted with
/// [`Pool::call`](crate::Pool::call) go to their caller instead. The stream ends once the pool
/// has stopped and everything emitted was received.
pub struct Outputs<O> {
    queue: Arc<Queue<Delivery<O>>>,
    id: u64,
}

impl<O> Clone for Outputs<O> {
    fn clone(&self) -> Self {
        Self::of(self.queue.clone())
    }
}

impl<O> fmt::Debug for Outputs<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outputs")
            .field("queued", &self.len())
            .finish()
    }
}

impl<O> Outputs<O> {
    fn of(queue: Arc<Queue<Delivery<O>>>) -> Self {
        let id = queue.consumers.fetch_add(1, Ordering::Relaxed);
        Self { queue, id }
    }

    /// The next output, or `None` once the pool has stopped and all were received.
    pub async fn recv(&self) -> Option<Delivery<O>> {
        // Each call waits under a number of its own: tasks sharing one `Outputs` may call this
        // at the same time, and each must be woken.
        let mut wait = Wait {
            queue: &self.queue,
            id: None,
        };
        poll_fn(|cx| {
            let queue = wait.queue;
            let known = wait.id;
            let (polled, id) = poll_queue(queue, cx, || {
                known.unwrap_or_else(|| queue.consumers.fetch_add(1, Ordering::Relaxed))
            });
            wait.id = id.or(known);
            polled
        })
        .await
    }

    /// The next output if one is waiting.
    pub fn try_recv(&self) -> Option<Delivery<O>> {
        self.queue.lock().items.pop_front()
    }

    /// Outputs received from workers and not yet taken from the stream.
    pub fn len(&self) -> usize {
        self.queue.lock().items.len()
    }

    /// Whether no output is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Delivery<O>>> {
        poll_queue(&self.queue, cx, || self.id).0
    }
}

impl<O> Drop for Outputs<O> {
    fn drop(&mut self) {
        forget_waiter(&self.queue, self.id);
    }
}

/// One call of [`Outputs::recv`]: its number, once it had to wait.
struct Wait<'a, T> {
    queue: &'a Queue<T>,
    id: Option<u64>,
}

impl<T> Drop for Wait<'_, T> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            forget_waiter(self.queue, id);
        }
    }
}

/// The next item of `queue`, or `None` once it is closed and empty; otherwise the waker of `cx`
/// waits under the number `id` gives, which is returned.
fn poll_queue<T>(
    queue: &Queue<T>,
    cx: &mut Context<'_>,
    id: impl FnOnce() -> u64,
) -> (Poll<Option<T>>, Option<u64>) {
    let mut state = queue.lock();
    if let Some(item) = state.items.pop_front() {
        return (Poll::Ready(Some(item)), None);
    }
    if state.closed {
        return (Poll::Ready(None), None);
    }
    let id = id();
    match state.waiting.iter_mut().find(|(waiting, _)| *waiting == id) {
        Some((_, waker)) => waker.clone_from(cx.waker()),
        None => state.waiting.push((id, cx.waker().clone())),
    }
    (Poll::Pending, Some(id))
}

/// A consumer that waited under `id` no longer does.
fn forget_waiter<T>(queue: &Queue<T>, id: u64) {
    queue.lock().waiting.retain(|(waiting, _)| *waiting != id);
}

impl<O> futures_util::Stream for Outputs<O> {
    type Item = Delivery<O>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::handle::Acker;
    use crate::wakes::counting as waker;
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;

    /// A delivery that counts its acknowledgement in `acked`.
    fn delivery(value: u32, acked: &Arc<AtomicUsize>) -> Delivery<u32> {
        let acked = acked.clone();
        let ack: Box<dyn FnOnce() + Send + Sync> = Box::new(move || {
            acked.fetch_add(1, Ordering::SeqCst);
        });
        Delivery::new(value, 0, None, Acker::Member(Some(ack)))
    }

    #[test]
    fn outputs_come_in_order_to_whichever_consumer_asks_and_the_stream_ends_when_closed() {
        let acked = Arc::new(AtomicUsize::new(0));
        let tx = OutputSender::new();
        let (a, b) = (tx.subscribe(), tx.subscribe());
        let (woken_a, wa) = waker();
        let (woken_b, wb) = waker();
        assert!(a.poll_recv(&mut Context::from_waker(&wa)).is_pending());
        assert!(b.poll_recv(&mut Context::from_waker(&wb)).is_pending());
        tx.send(delivery(1, &acked));
        // Both are woken: if `a` was woken and then dropped its wait, `b` still takes it.
        assert_eq!(woken_a.count(), 1);
        assert_eq!(woken_b.count(), 1);
        tx.send(delivery(2, &acked));
        let first = b.try_recv().map(Delivery::into_value);
        let second = a.clone().try_recv().map(Delivery::into_value);
        assert_eq!((first, second), (Some(1), Some(2)));
        assert_eq!(acked.load(Ordering::SeqCst), 2);

        tx.send(delivery(3, &acked));
        tx.close();
        assert_eq!(a.len(), 1, "what was queued before the close stays");
        let mut cx = Context::from_waker(&wa);
        assert!(matches!(a.poll_recv(&mut cx), Poll::Ready(Some(d)) if *d == 3));
        assert!(matches!(a.poll_recv(&mut cx), Poll::Ready(None)));
        tx.send(delivery(4, &acked));
        assert!(b.is_empty(), "nothing is queued once the stream is closed");
        assert_eq!(
            acked.load(Ordering::SeqCst),
            4,
            "and what was refused is acknowledged"
        );
    }

    #[test]
    fn the_stream_ends_when_its_sender_is_dropped_unclosed() {
        let acked = Arc::new(AtomicUsize::new(0));
        let tx = OutputSender::new();
        let outputs = tx.subscribe();
        tx.send(delivery(1, &acked));
        let mut waiting = Box::pin(async {
            let first = outputs.recv().await.map(Delivery::into_value);
            (first, outputs.recv().await.is_none())
        });
        let (woken, w) = waker();
        assert!(waiting
            .as_mut()
            .poll(&mut Context::from_waker(&w))
            .is_pending());
        // A pool dropped without a finished `stop` drops its sender without closing it.
        drop(tx);
        assert_eq!(woken.count(), 1, "the waiting consumer is woken");
        assert!(matches!(
            waiting.as_mut().poll(&mut Context::from_waker(&w)),
            Poll::Ready((Some(1), true))
        ));
    }

    #[test]
    fn calls_of_recv_on_one_consumer_each_wait_and_each_is_woken() {
        let acked = Arc::new(AtomicUsize::new(0));
        let tx = OutputSender::new();
        let outputs = tx.subscribe();
        let mut first = Box::pin(outputs.recv());
        let mut second = Box::pin(outputs.recv());
        let (woken_1, w1) = waker();
        let (woken_2, w2) = waker();
        assert!(first
            .as_mut()
            .poll(&mut Context::from_waker(&w1))
            .is_pending());
        assert!(second
            .as_mut()
            .poll(&mut Context::from_waker(&w2))
            .is_pending());
        tx.send(delivery(1, &acked));
        tx.send(delivery(2, &acked));
        assert_eq!(woken_1.count(), 1, "the first call is woken");
        assert_eq!(woken_2.count(), 1, "and so is the second");
        let value = |p: Poll<Option<Delivery<u32>>>| match p {
            Poll::Ready(Some(d)) => d.into_value(),
            _ => panic!("expected an output"),
        };
        let a = value(second.as_mut().poll(&mut Context::from_waker(&w2)));
        let b = value(first.as_mut().poll(&mut Context::from_waker(&w1)));
        assert_eq!((a, b), (1, 2));
        // A call dropped while it waits leaves nothing behind.
        let mut third = Box::pin(outputs.recv());
        assert!(third
            .as_mut()
            .poll(&mut Context::from_waker(&w1))
            .is_pending());
        assert_eq!(outputs.queue.lock().waiting.len(), 1);
        drop(third);
        assert!(outputs.queue.lock().waiting.is_empty());
    }
}
