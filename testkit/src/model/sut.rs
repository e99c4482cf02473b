//! The system under test: the real sans-IO [`PoolState`], optionally with a deliberate fault.

use super::reference::{MEMORY_LIMIT, RETRIES, STALL_LIMIT};
use super::retry::{RefEvent, RefKill, RefLoss};
use looppool_core::state::{
    Departure, Event, KillCause, Loss, PoolState, Refusal, RestartPolicy, Route, Routing, Transmit,
    Violation,
};
use looppool_core::TaskId;
use std::time::{Duration, Instant};

/// A deliberate fault, to prove that the checks catch it. `None` is the real state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// The real state, unchanged.
    None,
    /// A dead worker's first lost task is reported twice.
    LoseTwice,
    /// A dead worker's last lost task is never reported.
    ForgetLoss,
    /// The state is built with one more task slot than the pool promises.
    ExtraCapacity,
    /// The state is built with one more result credit than the pool promises.
    ExtraCredit,
    /// Round-robin submissions all go to worker 0.
    RouteToZero,
    /// A worker receives each batch of queued messages in reverse order.
    ReorderDelivery,
    /// A stop is never begun.
    IgnoreStop,
    /// Sticky broadcasts are sent as plain ones: replacements never receive them.
    ForgetSticky,
    /// A retirement is acknowledged but never begins.
    IgnoreRetire,
    /// A replacement is launched with the full result credit, whatever earlier incarnations
    /// left unacknowledged.
    FreshReplacementCredit,
    /// Credit acknowledged while a replacement launched is never sent to it.
    ForgetOwedCredit,
    /// Credits given back only ever ride along with a task, a cancellation or a stop: a worker
    /// with no task coming starves.
    AcksOnlyWithFrames,
    /// Credits given back go on their own only once they make half the credit, however little
    /// the worker has left: a consumer holding deliveries while it waits for more starves it.
    AcksOnlyInBatches,
    /// Outputs are not checked against the tasks their worker holds.
    AcceptForeignOutputs,
    /// Every death counts as a quick failure, however long the worker served.
    EveryDeathCounts,
    /// Retirements (recycling) count as deaths.
    RetirementsCount,
    /// A stop grants no backlog: workers nobody reads stay blocked.
    NoStopBacklog,
    /// Workers are never retired for the tasks they ended.
    NeverRecycle,
    /// Lost tasks are retried once more than the pool promises.
    ExtraRetry,
    /// Lost tasks are never retried.
    NoRetry,
    /// Retries still waiting for room when a stop begins are never reported.
    ForgetWaitingRetries,
    /// A worker is judged stalled before its silence passes the limit.
    StallEarly,
    /// Workers are never retired for their memory.
    IgnoreMemory,
    /// Untargeted submissions rotate even when the pool is to pick the least-loaded worker.
    IgnoreLoad,
    /// Cancellations are ignored: the task stays with its worker.
    IgnoreCancel,
    /// A worker that keeps a cancelled task is never killed.
    NoCancelGrace,
    /// Deadlines are not given to the state.
    IgnoreDeadline,
}

/// The real state, with what each worker has received on its link.
#[derive(Debug)]
pub struct Sut {
    state: PoolState<()>,
    mutation: Mutation,
    epoch: Instant,
    /// Per worker, what `has_transmit` said before the last delivery, and whether that
    /// delivery found anything.
    announced: Vec<bool>,
    drained: Vec<bool>,
    /// Per worker, credits a faulty acknowledgement policy holds back.
    withheld: Vec<usize>,
    /// Per worker, the tasks and pills its current incarnation received, in order.
    pub received: Vec<Vec<Transmit<()>>>,
}

impl Sut {
    /// A ready pool of `workers`, built with `mutation`.
    pub fn new(
        workers: usize,
        capacity: usize,
        credit: usize,
        least_loaded: bool,
        mutation: Mutation,
    ) -> Self {
        let capacity = capacity + usize::from(mutation == Mutation::ExtraCapacity);
        let credit = credit + usize::from(mutation == Mutation::ExtraCredit);
        let mut state = PoolState::new(workers, capacity, credit);
        let [max, window, initial, max_delay, healthy_after, retry_after] =
            super::reference::POLICY;
        let ms = Duration::from_millis;
        state.set_restart_policy(Some(RestartPolicy {
            max_restarts: max as u32,
            window: ms(window),
            initial: ms(initial),
            max_delay: ms(max_delay),
            healthy_after: ms(healthy_after),
            retry_after: ms(retry_after),
        }));
        state.set_stop_backlog(match mutation {
            Mutation::NoStopBacklog => 0,
            _ => super::reference::STOP_BACKLOG,
        });
        state.set_recycle_after(match mutation {
            Mutation::NeverRecycle => None,
            _ => Some(super::reference::RECYCLE_AFTER as u64),
        });
        state.set_retries(match mutation {
            Mutation::ExtraRetry => RETRIES + 1,
            Mutation::NoRetry => 0,
            _ => RETRIES,
        });
        state.set_stall_limit(Some(ms(STALL_LIMIT)));
        state.set_cancel_grace(match mutation {
            Mutation::NoCancelGrace => None,
            _ => Some(ms(super::cancel::CANCEL_GRACE)),
        });
        state.set_routing(match (least_loaded, mutation) {
            (true, Mutation::IgnoreLoad) | (false, _) => Routing::RoundRobin,
            (true, _) => Routing::LeastLoaded,
        });
        state.set_memory_limit(match mutation {
            Mutation::IgnoreMemory => None,
            _ => Some(MEMORY_LIMIT),
        });
        let epoch = Instant::now();
        for k in 0..workers {
            state.handle_ready(k, epoch).expect("a first handshake");
        }
        Self {
            state,
            mutation,
            epoch,
            announced: vec![false; workers],
            drained: vec![false; workers],
            withheld: vec![0; workers],
            received: vec![Vec::new(); workers],
        }
    }

    /// The real state, to inspect.
    pub fn state(&self) -> &PoolState<()> {
        &self.state
    }

    fn at(&self, tick: u64) -> Instant {
        self.epoch + Duration::from_millis(tick)
    }

    /// A submission.
    pub fn submit(&mut self, target: Option<usize>) -> Result<(usize, TaskId), Refusal> {
        let route = match (target, self.mutation) {
            (Some(k), _) => Route::Worker(k),
            (None, Mutation::RouteToZero) => Route::Worker(0),
            (None, _) => Route::Any,
        };
        self.state.submit(route, ())
    }

    /// A round-robin submission cancelled if it has not ended `ticks` after `tick`.
    pub fn submit_within(&mut self, tick: u64, ticks: u64) -> Result<(usize, TaskId), Refusal> {
        let deadline = match self.mutation {
            Mutation::IgnoreDeadline => None,
            _ => Some(self.at(tick + ticks)),
        };
        self.state.submit_until(Route::Any, (), deadline)
    }

    /// Cancels `id` at `tick`; returns the worker that held it, if it had not ended.
    pub fn cancel(&mut self, id: TaskId, tick: u64) -> Option<usize> {
        match self.mutation {
            Mutation::IgnoreCancel => None,
            _ => self.state.handle_cancel(id, self.at(tick)),
        }
    }

    /// A submission by `key`.
    pub fn submit_keyed(&mut self, key: u8) -> Result<(usize, TaskId), Refusal> {
        self.state.submit(Route::Key(key.into()), ())
    }

    /// A broadcast.
    pub fn broadcast(&mut self) -> Result<Vec<(usize, TaskId)>, Refusal> {
        self.state.broadcast(())
    }

    /// A sticky broadcast under `key`.
    pub fn broadcast_sticky(&mut self, key: u8) -> Result<Vec<(usize, TaskId)>, Refusal> {
        match self.mutation {
            Mutation::ForgetSticky => self.state.broadcast(()),
            _ => self.state.broadcast_sticky(&key.to_string(), ()),
        }
    }

    /// Asks `worker` to retire.
    pub fn retire(&mut self, worker: usize) -> bool {
        match self.mutation {
            Mutation::IgnoreRetire => {
                self.state.status(worker) == looppool_core::state::WorkerStatus::Ready
            }
            _ => self.state.handle_retire(worker),
        }
    }

    /// The link writes everything queued for `worker`; returns the result credit it returned.
    pub fn deliver(&mut self, worker: usize) -> usize {
        self.announced[worker] = self.state.has_transmit(worker);
        let mut credit = 0;
        let mut batch: Vec<Transmit<()>> = std::iter::from_fn(|| self.state.poll_transmit(worker))
            .filter(|t| match t {
                Transmit::Ack(n) => {
                    credit += *n as usize;
                    false
                }
                _ => true,
            })
            .collect();
        if self.mutation == Mutation::ReorderDelivery {
            batch.reverse();
        }
        // Credits the faulty policies would not have sent yet are held back.
        let half = self.state.result_credit().div_ceil(2);
        let hold = match self.mutation {
            Mutation::AcksOnlyWithFrames => batch.is_empty(),
            Mutation::AcksOnlyInBatches => {
                batch.is_empty() && credit + self.withheld[worker] < half
            }
            _ => false,
        };
        if hold {
            self.withheld[worker] += std::mem::take(&mut credit);
        } else {
            credit += std::mem::take(&mut self.withheld[worker]);
        }
        self.drained[worker] = !batch.is_empty() || credit > 0;
        self.received[worker].extend(batch);
        credit
    }

    /// Whether the last delivery to `worker` found something exactly when `has_transmit` said
    /// so before it: the pool's writer sleeps until told there is something to write.
    pub fn announced_what_it_delivered(&self, worker: usize) -> bool {
        self.announced[worker] == self.drained[worker]
    }

    /// The worker reports the end of `id`.
    pub fn done(&mut self, worker: usize, id: TaskId) -> Result<(), Violation> {
        self.state.handle_done(worker, id)
    }

    /// The worker emits an output tagged with `task`.
    pub fn output(&mut self, worker: usize, task: Option<TaskId>) -> Result<(), Violation> {
        let task = task.filter(|_| self.mutation != Mutation::AcceptForeignOutputs);
        self.state.handle_output(worker, task)
    }

    /// The consumer acknowledges one output of `worker`.
    pub fn ack(&mut self, worker: usize) {
        self.state.handle_ack(worker);
    }

    /// The credit a replacement of `worker` launched now is given.
    pub fn replacement_credit(&self, worker: usize) -> usize {
        match self.mutation {
            Mutation::FreshReplacementCredit => self.state.result_credit(),
            _ => self.state.replacement_credit(worker),
        }
    }

    /// The decisions the state made since the last call, in order, as the reference writes
    /// them.
    pub fn events(&mut self) -> Vec<RefEvent> {
        let raw: Vec<Event> = std::iter::from_fn(|| self.state.poll_event()).collect();
        let mut events: Vec<RefEvent> = raw.into_iter().filter_map(|e| self.translate(e)).collect();
        let died = |e: &RefEvent| matches!(e, RefEvent::Lost(_, _, RefLoss::Died));
        match self.mutation {
            Mutation::LoseTwice => {
                if let Some(at) = events.iter().position(died) {
                    events.insert(at, events[at]);
                }
            }
            Mutation::ForgetLoss => {
                if let Some(at) = events.iter().rposition(died) {
                    events.remove(at);
                }
            }
            Mutation::ForgetWaitingRetries => {
                events.retain(|e| !matches!(e, RefEvent::Lost(_, _, RefLoss::Stopped)))
            }
            _ => {}
        }
        events
    }

    fn translate(&self, event: Event) -> Option<RefEvent> {
        let ticks = |d: Duration| d.as_millis() as u64;
        Some(match event {
            Event::Kill { worker, cause } => RefEvent::Kill(
                worker,
                match cause {
                    KillCause::StopDeadline => RefKill::Stop,
                    KillCause::PoolKilled => RefKill::Pool,
                    KillCause::CancelIgnored { .. } => RefKill::Cancel,
                    _ => RefKill::Stall,
                },
            ),
            Event::Relaunch { worker, after } => RefEvent::Relaunch(worker, ticks(after)),
            Event::GaveUp {
                worker,
                failures,
                retry_at,
            } => RefEvent::GaveUp(
                worker,
                failures,
                ticks(retry_at.saturating_duration_since(self.epoch)),
            ),
            Event::Lost { worker, id, why } => RefEvent::Lost(
                worker,
                id,
                match why {
                    Loss::Died => RefLoss::Died,
                    Loss::Stopped => RefLoss::Stopped,
                    _ => RefLoss::Unroutable,
                },
            ),
            Event::Retried { id, from, to } => RefEvent::Retried(id, from, to),
            Event::Retiring { worker, .. } => RefEvent::Retiring(worker),
            Event::Expired { worker, id } => RefEvent::Expired(worker, id),
            _ => return None,
        })
    }

    /// The worker's incarnation is gone at `tick`, after its goodbye (`retired`) or not.
    pub fn exit(&mut self, worker: usize, tick: u64, retired: bool) {
        let how = match (retired, self.mutation) {
            (false, Mutation::EveryDeathCounts) => Departure::LaunchFailed,
            (true, Mutation::RetirementsCount) => Departure::Died,
            (true, _) => Departure::Retired,
            (false, _) => Departure::Died,
        };
        let _ = self.state.handle_exit(worker, self.at(tick), how);
    }

    /// A replacement of `worker` failed to launch at `tick`.
    pub fn launch_failed(&mut self, worker: usize, tick: u64) {
        let _ = self.state.handle_launch_failed(worker, self.at(tick));
    }

    /// The worker's loop has been silent for `ticks`.
    pub fn silence(&mut self, worker: usize, ticks: u64) {
        let ticks = match self.mutation {
            Mutation::StallEarly => ticks * 2,
            _ => ticks,
        };
        self.state
            .handle_silence(worker, Duration::from_millis(ticks));
    }

    /// The worker's memory was measured at `bytes`; returns whether it began retiring.
    pub fn memory(&mut self, worker: usize, bytes: u64) -> bool {
        self.state.handle_memory(worker, bytes)
    }

    /// The pool is killed at `tick`.
    pub fn kill_all(&mut self, tick: u64) {
        if self.mutation != Mutation::IgnoreStop {
            self.state.kill_all(self.at(tick));
        }
    }

    /// A replacement launched with `given` credit takes the number; returns its generation and
    /// the replayed broadcasts.
    pub fn replace(&mut self, worker: usize, given: usize) -> (u64, Vec<TaskId>) {
        self.received[worker].clear();
        self.withheld[worker] = 0;
        let given = match self.mutation {
            Mutation::ForgetOwedCredit => self.state.replacement_credit(worker),
            _ => given,
        };
        self.state.handle_replaced(worker, given)
    }

    /// A replacement finished its handshake at `tick`.
    pub fn ready(&mut self, worker: usize, tick: u64) -> Result<(), Violation> {
        self.state.handle_ready(worker, self.at(tick))
    }

    /// A replacement under way is abandoned (a stop began).
    pub fn abandon_launch(&mut self) {
        self.state.handle_launch_abandoned();
    }

    /// The state takes a given-up `worker` back, at `tick` or on request.
    pub fn revive(&mut self, worker: usize, tick: u64, on_request: bool) -> bool {
        let now = (!on_request).then(|| self.at(tick));
        self.state.revive(worker, now)
    }

    /// The worker says goodbye.
    pub fn bye(&mut self, worker: usize) -> Result<(), Violation> {
        self.state.handle_bye(worker)
    }

    /// A stop begins at `tick` with `grace` ticks.
    pub fn begin_stop(&mut self, tick: u64, grace: u64) {
        if self.mutation != Mutation::IgnoreStop {
            self.state
                .begin_stop(self.at(tick), Duration::from_millis(grace));
        }
    }

    /// Time reached `tick`.
    pub fn timeout(&mut self, tick: u64) {
        self.state.handle_timeout(self.at(tick));
    }

    /// Whether the state's next deadline is after `tick`: a clock that has just handled `tick`
    /// must not be asked to again, or it would spin.
    pub fn timeout_settled(&self, tick: u64) -> bool {
        self.state
            .poll_timeout()
            .is_none_or(|at| at > self.at(tick))
    }
}
