//! Carrying out the state's decisions: each [`Event`](crate::state::Event) the state queues
//! is prepared under the lock (pending entries resolved, killers and causes recorded,
//! supervisors told what comes next) and carried out once the lock is released.

use super::shared::{Inner, Next, Shared};
use crate::error::{Exit, TaskError};
use crate::launch::Killer;
use crate::state::{Event as Decision, KillCause, Loss};

/// The state's decisions, taken under the lock and carried out after it is released.
#[must_use]
pub(crate) struct Actions {
    kills: Vec<Killer>,
    writers: Vec<usize>,
    supervisors: Vec<usize>,
    notes: Vec<(tracing::Level, usize, String)>,
    any: bool,
}

impl<O> Shared<O> {
    /// Takes the state's decisions, under the lock: the driver's share of each is prepared here
    /// (killers and causes recorded, supervisors told what is next) and carried out by
    /// [`Actions::run`] once the lock is released. Tasks the state ends are resolved here,
    /// under the lock: whoever next sees the state (a `stop` that finds every worker gone)
    /// finds their handles resolved too.
    pub(crate) fn decisions(&self, inner: &mut Inner<O>) -> Actions {
        let mut actions = Actions {
            kills: Vec::new(),
            writers: Vec::new(),
            supervisors: Vec::new(),
            notes: Vec::new(),
            any: false,
        };
        while let Some(decision) = inner.state.poll_event() {
            actions.any = true;
            self.decide(inner, decision, &mut actions);
        }
        actions
    }

    fn decide(&self, inner: &mut Inner<O>, decision: Decision, actions: &mut Actions) {
        use tracing::Level;
        match decision {
            Decision::Kill { worker, cause } => {
                let entry = &mut inner.workers[worker];
                let text = match cause {
                    KillCause::StopDeadline => format!(
                        "lost at the stop deadline: the worker was still running {:?} after the \
                         stop began, and was killed",
                        self.settings.stop_timeout
                    ),
                    KillCause::PoolKilled => "killed by Pool::kill()".into(),
                    KillCause::CancelIgnored { task } => format!(
                        "it did not drop cancelled task {task} within the cancel grace (code that \
                         never yields), and was killed; its other tasks were sent again"
                    ),
                    KillCause::Stalled { silent } => format!(
                        "its event loop did not turn for {silent:?} while it held tasks (a task \
                         ran past its timeout without yielding), and it was killed"
                    ),
                };
                let level = match cause {
                    KillCause::PoolKilled => Level::DEBUG,
                    _ => Level::WARN,
                };
                actions
                    .notes
                    .push((level, worker, format!("killing worker {worker}: {text}")));
                entry.kill_cause.get_or_insert(text);
                actions.kills.extend(entry.killer.clone());
            }
            Decision::Relaunch { worker, after } => {
                inner.workers[worker].next = Some(Next::Launch(after));
                actions.supervisors.push(worker);
            }
            Decision::GaveUp {
                worker,
                failures,
                retry_at,
            } => {
                inner.workers[worker].next = Some(Next::Retry(retry_at));
                actions.supervisors.push(worker);
                let wait = retry_at.saturating_duration_since(self.runtime.now());
                actions.notes.push((
                    Level::ERROR,
                    worker,
                    format!(
                        "worker {worker} failed quickly {failures} times; not replacing it for \
                         {wait:?} (Pool::revive brings it back sooner)"
                    ),
                ));
            }
            Decision::Lost { worker, id, why } => {
                let Some(p) = inner.pending.remove(&id) else {
                    return;
                };
                let entry = &mut inner.workers[worker];
                let exit = entry.exit.unwrap_or(Exit::Unknown);
                let cause = match why {
                    Loss::Died => entry.cause.clone(),
                    Loss::Stopped => Some(format!(
                        "its worker died, and the pool stopped before its retry found a worker \
                         ({} attempts)",
                        p.done.attempts()
                    )),
                    Loss::Unroutable(refusal) => Some(format!(
                        "its worker died, and no worker can take its retry: {refusal}"
                    )),
                };
                entry.account.lost(1, &self.lanes[worker].instruments);
                let lost = TaskError::Lost {
                    worker,
                    exit,
                    cause,
                };
                p.done.send(Err(lost));
            }
            Decision::Retried { id, from, to } => {
                if let Some(p) = inner.pending.get(&id) {
                    // At-least-once: it may have run partly on the dead worker. It keeps its id,
                    // which goes on tagging its outputs.
                    let attempt = p.done.sent_again();
                    actions.notes.push((
                        Level::DEBUG,
                        from,
                        format!("task {id} of worker {from} sent again to worker {to} (attempt {attempt})"),
                    ));
                }
                actions.writers.push(to);
            }
            Decision::Expired { worker, id } => {
                if let Some(p) = inner.pending.remove(&id) {
                    let after = p.timeout.unwrap_or_default();
                    p.done.send(Err(TaskError::TimedOut { after }));
                }
                // Its worker is sent the cancellation, and has room again.
                actions.writers.push(worker);
            }
            Decision::Retiring { worker, why } => {
                actions.writers.push(worker);
                if let crate::state::Retirement::Memory { bytes, limit } = why {
                    actions.notes.push((
                        Level::INFO,
                        worker,
                        format!(
                            "recycling worker {worker}: resident memory {bytes} bytes, over \
                             {limit} bytes"
                        ),
                    ));
                }
            }
        }
    }
}

impl Actions {
    /// Carries out the decisions taken by [`Shared::decisions`], outside the lock.
    pub(crate) fn run<O>(self, shared: &Shared<O>) {
        if !self.any {
            return;
        }
        for killer in &self.kills {
            killer.kill();
        }
        for (level, worker, note) in &self.notes {
            let pool = &shared.settings.name;
            match *level {
                tracing::Level::ERROR => tracing::error!(pool = %pool, worker, "{note}"),
                tracing::Level::WARN => tracing::warn!(pool = %pool, worker, "{note}"),
                tracing::Level::INFO => tracing::info!(pool = %pool, worker, "{note}"),
                _ => tracing::debug!(pool = %pool, worker, "{note}"),
            }
        }
        for &worker in &self.writers {
            shared.wake_writer(worker);
        }
        for &worker in &self.supervisors {
            shared.lanes[worker].supervisor.notify(usize::MAX);
        }
        shared.wake_all();
    }
}

impl<O: serde::de::DeserializeOwned + Send + 'static> Shared<O> {
    /// Worker `worker` (incarnation `generation`) is gone: the state decides what becomes of
    /// its tasks and its number, and the decisions are carried out. `retired` says it left
    /// gracefully after draining (recycling), which does not count against the restart limit.
    pub(crate) fn worker_exited(
        &self,
        worker: usize,
        generation: u64,
        exit: Exit,
        cause: Option<String>,
        retired: bool,
    ) {
        let (actions, held) = {
            let mut inner = self.lock();
            if inner.state.generation(worker) != generation {
                return;
            }
            let held = inner.state.held(worker);
            let entry = &mut inner.workers[worker];
            // Killed on purpose: that is why its link broke, whatever the link said.
            entry.cause = entry.kill_cause.take().or(cause);
            entry.exit = Some(exit);
            entry.killer = None;
            entry.link_fd = None;
            entry.sender = None;
            entry.carry.clear();
            entry.account.incarnation_ended();
            let how = if retired {
                crate::state::Departure::Retired
            } else {
                crate::state::Departure::Died
            };
            let _ = inner.state.handle_exit(worker, self.runtime.now(), how);
            (self.decisions(&mut inner), held)
        };
        if held > 0 || !exit.success() {
            tracing::warn!(
                pool = %self.settings.name,
                worker,
                %exit,
                held,
                "looppool worker ended"
            );
        }
        actions.run(self);
        self.wake_all();
    }
}
