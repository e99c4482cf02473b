//! The pool's clock: it calls the state back at the deadlines the state asks for
//! ([`poll_timeout`](crate::state::PoolState::poll_timeout): the stop deadline, the grace of a
//! cancelled task) and carries out what the state then decides.

use super::shared::Shared;
use futures_util::future::select;
use std::sync::Arc;

/// Starts the clock of a pool; it ends once the pool has stopped.
pub(crate) fn spawn<O: Send + 'static>(shared: &Arc<Shared<O>>) {
    let shared = shared.clone();
    let runtime = shared.runtime.clone();
    runtime.spawn(Box::pin(async move {
        loop {
            let listener = shared.clock.listen();
            let (deadline, stopped) = {
                let inner = shared.lock();
                (inner.state.poll_timeout(), inner.state.is_stopped())
            };
            if stopped {
                return;
            }
            let now = shared.runtime.now();
            match deadline {
                Some(at) if at <= now => {
                    let actions = {
                        let mut inner = shared.lock();
                        inner.state.handle_timeout(now);
                        shared.decisions(&mut inner)
                    };
                    actions.run(&shared);
                }
                Some(at) => drop(select(shared.runtime.sleep(at - now), listener).await),
                None => listener.await,
            }
        }
    }));
}
