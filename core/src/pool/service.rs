//! `Pool` as a `tower::Service` (feature `tower`): a request is a task, its response the task's
//! first output, as with [`Pool::call`].

use super::Pool;
use crate::error::CallError;
use crate::worker::Worker;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The future of one request to a [`Pool`] used as a `tower::Service`.
pub type ServiceFuture<W> = Pin<
    Box<
        dyn Future<Output = Result<<W as Worker>::Output, CallError<<W as Worker>::Error>>>
            + Send
            + 'static,
    >,
>;

/// Each request is a [`call`](Pool::call) on a clone of the pool: it waits for room, its task is
/// cancelled in its worker if the response future is dropped (a client that went away, a
/// `tower::timeout` layer), and every failure is a [`CallError`].
///
/// `poll_ready` is always ready: the pool has no per-caller reservation, and a request that
/// finds every worker full waits inside its future. Put a concurrency limit or a load-shedding
/// layer in front to refuse requests instead (or use [`Pool::try_call`] directly).
impl<W: Worker> tower_service::Service<W::Task> for Pool<W> {
    type Response = W::Output;
    type Error = CallError<W::Error>;
    type Future = ServiceFuture<W>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: W::Task) -> Self::Future {
        let pool = self.clone();
        Box::pin(async move { pool.call(task).await })
    }
}
