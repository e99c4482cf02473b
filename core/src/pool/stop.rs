//! Ending a pool: a graceful stop, a kill, and what dropping it does.

use super::shared::Shared;
use super::Pool;
use crate::error::Exit;
use crate::state::Departure;
use crate::worker::Worker;
use std::sync::Arc;
use std::time::Duration;

/// How a stopped pool's workers ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    exits: Vec<Exit>,
    killed: Vec<usize>,
}

impl Stopped {
    /// How each worker number's last incarnation ended. A worker that crashed earlier and
    /// whose replacement the stop cancelled shows that crash.
    pub fn exits(&self) -> &[Exit] {
        &self.exits
    }

    /// The workers that were killed instead of stopping: at the stop deadline, or by
    /// [`Pool::kill`].
    pub fn killed(&self) -> &[usize] {
        &self.killed
    }

    /// Whether the stop was graceful: no worker was killed at the stop deadline or by
    /// [`Pool::kill`].
    pub fn is_graceful(&self) -> bool {
        self.killed.is_empty()
    }
}

impl<W: Worker> Pool<W> {
    /// Stops the pool gracefully and waits until it has stopped.
    ///
    /// New submissions are refused from now on ([`SubmitError::Closed`](crate::SubmitError::Closed)). Each worker receives
    /// the poison pill behind the tasks it already has, finishes them (delivering their
    /// outputs, which needs a consumer reading [`outputs`](Self::outputs)), says goodbye and
    /// exits. Workers still running when the stop timeout passes are killed and their tasks
    /// end as lost. When this returns, every task ever accepted has ended and the output stream
    /// ends after its last output. Calling it again, or concurrently, waits for the same stop.
    pub async fn stop(&self) -> Stopped {
        let shared = &self.shared;
        let runtime = shared.runtime.clone();
        let launching: Vec<_> = {
            let mut inner = shared.lock();
            inner
                .state
                .begin_stop(runtime.now(), shared.settings.stop_timeout);
            // A replacement still launching (a slow init) will never be used.
            inner
                .workers
                .iter_mut()
                .filter_map(|w| w.launching.take())
                .collect()
        };
        for killer in launching {
            killer.kill();
        }
        shared.wake_all();
        // The pool's clock kills what the stop deadline finds alive; this waits for the end.
        loop {
            let listener = shared.exited.listen();
            let (stopped, actions) = {
                let mut inner = shared.lock();
                (inner.state.is_stopped(), shared.decisions(&mut inner))
            };
            actions.run(shared);
            if stopped {
                break;
            }
            listener.await;
        }
        shared.outputs.close();
        let inner = shared.lock();
        Stopped {
            exits: inner
                .workers
                .iter()
                .map(|w| w.exit.unwrap_or(Exit::Unknown))
                .collect(),
            killed: inner.state.killed().to_vec(),
        }
    }

    /// Begins a stop with no grace: every worker is killed now and its tasks end as lost.
    /// Await [`stop`](Self::stop) afterwards to wait until all are reaped.
    pub fn kill(&self) {
        let (launching, actions) = {
            let mut inner = self.shared.lock();
            inner.state.kill_all(self.shared.runtime.now());
            let launching: Vec<_> = inner
                .workers
                .iter_mut()
                .filter_map(|w| w.launching.take())
                .collect();
            (launching, self.shared.decisions(&mut inner))
        };
        for k in launching {
            k.kill();
        }
        actions.run(&self.shared);
        self.shared.wake_all();
    }
}

/// What kills a pool's workers when the last handle to it is dropped.
pub(super) struct Owner<O> {
    pub(super) shared: Arc<Shared<O>>,
}

impl<O> Drop for Owner<O> {
    fn drop(&mut self) {
        let (killers, actions) = {
            let mut inner = self.shared.lock();
            if inner.state.is_stopped() {
                return;
            }
            let now = self.shared.runtime.now();
            inner.state.begin_stop(now, Duration::ZERO);
            let mut killers: Vec<_> = inner.workers.iter_mut().map(|w| w.killer.take()).collect();
            for (worker, killer) in killers.iter().enumerate() {
                if killer.is_some() {
                    let entry = &mut inner.workers[worker];
                    entry.exit = Some(Exit::Signal(nix::sys::signal::Signal::SIGKILL as i32));
                    entry.cause = Some("the pool was dropped without being stopped".into());
                    let _ = inner.state.handle_exit(worker, now, Departure::Died);
                }
            }
            // Replacements still launching: no task of theirs to lose, but no process may stay.
            killers.extend(inner.workers.iter_mut().map(|w| w.launching.take()));
            (killers, self.shared.decisions(&mut inner))
        };
        for killer in killers.iter().flatten() {
            killer.kill_and_reap_blocking();
        }
        actions.run(&self.shared);
        self.shared.outputs.close();
        self.shared.wake_all();
    }
}
