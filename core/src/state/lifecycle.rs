//! Workers coming and going: exits and what becomes of their tasks (retried or lost),
//! relaunches and give-ups, retirement, stall kills, and the stop. Each decision is queued as
//! an [`Event`] for the driver.

use super::{
    Deferred, Departure, Event, KillCause, Loss, Phase, PoolState, Refusal, Restart, Retirement,
    Route, TaskId, WorkerStatus,
};
use std::time::{Duration, Instant};

impl<P: Clone> PoolState<P> {
    /// The next decision for the driver to carry out, oldest first. Drain it after every input.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The incarnation of `worker` is gone at `now`; it ended `how` (the driver says whether it
    /// retired after its goodbye or died).
    ///
    /// Each task it held is retried on another worker (or, if it was targeted, on its own
    /// number's replacement) while the pool runs and the task's retries are not spent; else it
    /// is lost ([`Event::Lost`]). A retry with no worker to take it yet waits for room
    /// ([`retries_waiting`](Self::retries_waiting)) and goes out as an [`Event::Retried`].
    /// Then the [`RestartPolicy`](super::RestartPolicy) decides about the number
    /// ([`Event::Relaunch`] or [`Event::GaveUp`]), which is also returned. A relaunch decided
    /// here is *under way* (a stop waits for it) until it is registered
    /// ([`handle_replaced`](Self::handle_replaced)), abandoned
    /// ([`handle_launch_abandoned`](Self::handle_launch_abandoned)), or fails for good.
    ///
    /// Calling it again for the same incarnation does nothing and returns [`Restart::Never`].
    pub fn handle_exit(&mut self, worker: usize, now: Instant, how: Departure) -> Restart {
        if !self.slots[worker].is_live() {
            return Restart::Never;
        }
        let running = self.phase == Phase::Running;
        // Killed for a cancelled task it did not drop: the others it held are not at fault.
        let blameless = self.slots[worker].killed_for_cancel();
        for (id, held) in self.slots[worker].exit() {
            if running && !held.replay && (blameless || held.attempts <= self.retries) {
                self.deferred.push_back(Deferred {
                    id,
                    from: worker,
                    held,
                });
            } else {
                self.events.push_back(Event::Lost {
                    worker,
                    id,
                    why: Loss::Died,
                });
            }
        }
        if let Phase::Stopping { .. } = self.phase {
            if self.slots.iter().all(|s| !s.is_live()) {
                self.phase = Phase::Stopped;
            }
        }
        let decision = self.decide_restart(worker, now, how);
        self.place_deferred();
        decision
    }

    /// The replacement of `worker` could not be launched (or failed its handshake or init) at
    /// `now`: the restart policy decides again, as for [`handle_exit`](Self::handle_exit). A
    /// failed launch that is not tried again is no longer under way.
    pub fn handle_launch_failed(&mut self, worker: usize, now: Instant) -> Restart {
        let decision = self.decide_restart(worker, now, Departure::LaunchFailed);
        if !matches!(decision, Restart::After(_)) {
            self.launches = self.launches.saturating_sub(1);
        }
        self.place_deferred();
        decision
    }

    fn decide_restart(&mut self, worker: usize, now: Instant, how: Departure) -> Restart {
        let decision = self.restart_decision(worker, now, how);
        match decision {
            Restart::After(after) => {
                if how != Departure::LaunchFailed {
                    self.launches += 1;
                }
                self.events.push_back(Event::Relaunch { worker, after });
            }
            Restart::GiveUp { failures, retry_at } => self.events.push_back(Event::GaveUp {
                worker,
                failures,
                retry_at,
            }),
            Restart::Never => {}
        }
        decision
    }

    fn restart_decision(&mut self, worker: usize, now: Instant, how: Departure) -> Restart {
        let Some(policy) = self.restart.filter(|_| self.phase == Phase::Running) else {
            return Restart::Never;
        };
        if self.slots[worker].is_live() {
            return Restart::Never;
        }
        let decision = self.histories[worker].decide(&policy, now, how);
        self.slots[worker].set_replacing(matches!(decision, Restart::After(_)));
        decision
    }

    /// Sends waiting retries to workers with room, oldest first; at a stop, or with no worker
    /// left to take one, they are lost.
    pub(super) fn place_deferred(&mut self) {
        for _ in 0..self.deferred.len() {
            let Some(mut d) = self.deferred.pop_front() else {
                break;
            };
            if self.phase != Phase::Running {
                self.events.push_back(Event::Lost {
                    worker: d.from,
                    id: d.id,
                    why: Loss::Stopped,
                });
                continue;
            }
            match self.choose(d.held.route) {
                Ok(to) => {
                    d.held.attempts += 1;
                    let (id, route) = (d.id, d.held.route);
                    let deadline = d.held.deadline;
                    self.slots[to].accept(id, d.held.payload, route, d.held.attempts, deadline);
                    if route == Route::Any {
                        self.cursor = (to + 1) % self.slots.len();
                    }
                    self.events.push_back(Event::Retried {
                        id,
                        from: d.from,
                        to,
                    });
                }
                Err(Refusal::Full { .. } | Refusal::Replacing { .. }) => self.deferred.push_back(d),
                Err(refusal) => self.events.push_back(Event::Lost {
                    worker: d.from,
                    id: d.id,
                    why: Loss::Unroutable(refusal),
                }),
            }
        }
    }

    /// A replacement under way was given up by the driver (a stop began before or while it
    /// launched; it was killed).
    pub fn handle_launch_abandoned(&mut self) {
        self.launches = self.launches.saturating_sub(1);
    }

    /// Replacements decided and not yet registered or abandoned.
    pub fn launches_under_way(&self) -> usize {
        self.launches
    }

    /// Takes the given-up `worker` back: a replacement is due now ([`Event::Relaunch`], and
    /// `true`) if its retry time has come by `now`, or at once when `now` is `None` (a revival
    /// on request). Nothing happens while the pool is stopping or the number is not given up.
    pub fn revive(&mut self, worker: usize, now: Option<Instant>) -> bool {
        let Some(policy) = self.restart.filter(|_| self.phase == Phase::Running) else {
            return false;
        };
        if self.slots[worker].is_live() || !self.histories[worker].revive(&policy, now) {
            return false;
        }
        self.slots[worker].set_replacing(true);
        self.launches += 1;
        self.events.push_back(Event::Relaunch {
            worker,
            after: Duration::ZERO,
        });
        true
    }

    /// When the given-up `worker` is tried again, if it is given up.
    pub fn given_up_until(&self, worker: usize) -> Option<Instant> {
        let policy = self.restart?;
        if self.slots[worker].status() != WorkerStatus::Exited {
            return None;
        }
        Some(self.histories[worker].given_up_at()? + policy.retry_after)
    }

    /// Asks `worker` to retire: it takes no new tasks, receives the poison pill behind what it
    /// holds, and drains; its replacement then takes its number. Returns whether it began
    /// retiring now (not if it already was, or has exited, or the pool is stopping).
    pub fn handle_retire(&mut self, worker: usize) -> bool {
        self.retire(worker, Retirement::Requested)
    }

    pub(super) fn retire(&mut self, worker: usize, why: Retirement) -> bool {
        let slot = &mut self.slots[worker];
        if self.phase != Phase::Running || !slot.accepts() {
            return false;
        }
        slot.queue_stop();
        self.events.push_back(Event::Retiring { worker, why });
        true
    }

    /// The resident memory of `worker` was measured at `bytes`: past the memory limit
    /// ([`set_memory_limit`](Self::set_memory_limit)) it retires. Returns whether it began
    /// retiring now.
    pub fn handle_memory(&mut self, worker: usize, bytes: u64) -> bool {
        match self.memory_limit {
            Some(limit) if bytes > limit => {
                self.retire(worker, Retirement::Memory { bytes, limit })
            }
            _ => false,
        }
    }

    /// The event loop of `worker` has been silent (no frame from it) for `silent`: past the
    /// stall limit ([`set_stall_limit`](Self::set_stall_limit)), while it holds tasks, it is to
    /// be killed ([`Event::Kill`], once per incarnation).
    pub fn handle_silence(&mut self, worker: usize, silent: Duration) {
        let Some(limit) = self.stall_limit else {
            return;
        };
        let slot = &mut self.slots[worker];
        if silent > limit && slot.held() > 0 && slot.take_kill() {
            self.events.push_back(Event::Kill {
                worker,
                cause: KillCause::Stalled { silent },
            });
        }
    }

    /// A new incarnation of an exited worker takes its number; it was launched with
    /// `credit_given` result credit (its [`replacement_credit`](Self::replacement_credit) then).
    /// Outputs of earlier incarnations acknowledged since its launch are owed to it and go out
    /// as an [`Ack`](super::Transmit::Ack). Every sticky broadcast is replayed to it before
    /// anything else, as many at a time as its capacity allows; until the last is out it takes
    /// no other task and broadcasts wait. Returns its generation and the ids of the replays
    /// sent now (more follow as it ends tasks).
    ///
    /// # Panics
    /// If the worker has not exited.
    pub fn handle_replaced(&mut self, worker: usize, credit_given: usize) -> (u64, Vec<TaskId>) {
        self.launches = self.launches.saturating_sub(1);
        let owed = self.replacement_credit(worker).saturating_sub(credit_given);
        let generation = self.slots[worker].replace(owed);
        let payloads: Vec<P> = self.sticky.iter().map(|(_, p)| p.clone()).collect();
        self.slots[worker].queue_replay(payloads);
        let replayed = self.release_replay(worker);
        self.place_deferred();
        (generation, replayed)
    }

    /// Begins a graceful stop: new submissions are refused, every live worker is sent the poison
    /// pill behind what it already has and granted the stop backlog
    /// ([`set_stop_backlog`](Self::set_stop_backlog)), retries still waiting are lost, and
    /// workers still alive at `now + grace` are to be killed (see
    /// [`handle_timeout`](Self::handle_timeout)). Calling it again only brings the deadline
    /// forward (a kill after a graceful stop began).
    pub fn begin_stop(&mut self, now: Instant, grace: Duration) {
        match self.phase {
            Phase::Running => {}
            Phase::Stopping { deadline } => {
                self.phase = Phase::Stopping {
                    deadline: deadline.min(now + grace),
                };
                return;
            }
            Phase::Stopped => return,
        }
        self.phase = Phase::Stopping {
            deadline: now + grace,
        };
        for slot in &mut self.slots {
            slot.queue_stop();
            slot.grant(self.stop_backlog);
            // A stop cancels the replacements on their way.
            slot.set_replacing(false);
        }
        self.place_deferred();
        if self.slots.iter().all(|s| !s.is_live()) {
            self.phase = Phase::Stopped;
        }
    }

    /// Stops the pool with no grace: every live worker is to be killed now
    /// ([`Event::Kill`] with [`KillCause::PoolKilled`]).
    pub fn kill_all(&mut self, now: Instant) {
        self.begin_stop(now, Duration::ZERO);
        self.take_kills(KillCause::PoolKilled);
    }

    fn take_kills(&mut self, cause: KillCause) {
        for worker in 0..self.slots.len() {
            if self.slots[worker].take_kill() {
                self.killed.push(worker);
                self.events.push_back(Event::Kill { worker, cause });
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called, if ever: the stop
    /// deadline, or when a worker must have dropped a cancelled task.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Only deadlines that still decide something: a worker already being killed needs
        // neither the stop deadline nor its cancel grace again.
        let killable = || self.slots.iter().filter(|s| s.killable());
        let stop = match self.phase {
            Phase::Stopping { deadline } if killable().next().is_some() => Some(deadline),
            _ => None,
        };
        let cancels = self
            .cancel_grace
            .and_then(|_| killable().filter_map(|s| s.cancel_deadline()).min());
        let deadlines = self.slots.iter().filter_map(|s| s.next_deadline());
        let waiting = self.deferred.iter().filter_map(|d| d.held.deadline);
        stop.into_iter()
            .chain(cancels)
            .chain(deadlines)
            .chain(waiting)
            .min()
    }

    /// Time has reached `now`: past the stop deadline, every worker still alive is to be
    /// killed ([`Event::Kill`] with [`KillCause::StopDeadline`], each once); so is a worker
    /// that did not drop a cancelled task within the cancel grace
    /// ([`KillCause::CancelIgnored`]).
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Phase::Stopping { deadline } = self.phase {
            if now >= deadline {
                self.take_kills(KillCause::StopDeadline);
            }
        }
        self.expire(now);
        if self.cancel_grace.is_some() {
            for worker in 0..self.slots.len() {
                if let Some(task) = self.slots[worker].take_cancel_kill(now) {
                    self.events.push_back(Event::Kill {
                        worker,
                        cause: KillCause::CancelIgnored { task },
                    });
                }
            }
        }
    }
}
