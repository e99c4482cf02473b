//! Model checks of the sans-IO pool state against a reference model.
//!
//! [`check`] applies a random run of [`Transition`]s to both the [`Reference`] and the real
//! state (in [`Sut`]), compares every answer, and after every step checks the invariants of the
//! design:
//!
//! 1. every accepted task ends exactly once, and until then its worker holds it;
//! 2. no worker holds more than its capacity of tasks or has more unacknowledged outputs than
//!    its credit (and an output beyond the credit is reported as a violation); the credit
//!    belongs to the worker number: a replacement starts with what earlier incarnations left
//!    unacknowledged subtracted, and is sent what the consumer acknowledged meanwhile;
//!    an output for a task its worker does not hold is a violation;
//! 3. round-robin gives each live worker `⌊k/n⌋` or `⌈k/n⌉` of `k` submissions while the set of
//!    live workers stays the same (and picks the worker the reference picks);
//! 4. each worker receives exactly what was queued for it, in order, so a broadcast reaches each
//!    live worker once, behind what was sent to it before;
//! 5. once a stop begins every submission is refused, and the pool is stopped exactly when every
//!    worker has exited, at which point every accepted task has ended.
//!
//! A [`Mutation`] plants a fault in the state; the testkit's tests prove that each is caught.

mod reference;
mod sut;
mod transition;

pub use reference::{
    End, RefHistory, RefPhase, RefRefusal, RefRestart, RefWorker, Reference, Sent, POLICY,
    RECYCLE_AFTER, STOP_BACKLOG,
};
pub use sut::{Mutation, Sut};
pub use transition::{cases, Case, Ending, Transition};

use looppool_core::state::{Refusal, Transmit, Violation};
use looppool_core::TaskId;
use std::collections::BTreeMap;

/// How many cases a property runs: the environment variable `var` (for a long soak), or
/// `default`.
pub fn case_count(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// The reference and the state side by side, with what the checks remember between steps.
struct Harness {
    model: Reference,
    sut: Sut,
    /// How many times the state reported each task's end.
    reported: BTreeMap<TaskId, usize>,
    /// Round-robin acceptances per worker since the set of live workers last changed.
    epoch: BTreeMap<usize, usize>,
    /// Per worker number, the credit a replacement launched and not yet registered was given.
    launched: Vec<Option<usize>>,
}

fn refusal_matches(real: &Refusal, model: &RefRefusal) -> bool {
    match (real, model) {
        (Refusal::Full { worker }, RefRefusal::Full(k)) => worker == k,
        (Refusal::Closed, RefRefusal::Closed) => true,
        (Refusal::WorkerExited { .. } | Refusal::NoLiveWorkers, RefRefusal::Unroutable) => true,
        (Refusal::Replacing { worker }, RefRefusal::Replacing(k)) => worker == k,
        _ => false,
    }
}

/// Whether the state's answer to a submission is the reference's.
fn agrees<T: PartialEq>(real: &Result<T, Refusal>, expected: &Result<T, RefRefusal>) -> bool {
    match (real, expected) {
        (Ok(r), Ok(e)) => r == e,
        (Err(r), Err(e)) => refusal_matches(r, e),
        _ => false,
    }
}

/// The invariant a disagreement about a submission breaks, by what the reference expected.
fn label<T>(expected: &Result<T, RefRefusal>) -> &'static str {
    match expected {
        Ok(_) => "round-robin",
        Err(RefRefusal::Full(_)) => "capacity",
        Err(RefRefusal::Closed) => "stop",
        Err(RefRefusal::Unroutable | RefRefusal::Replacing(_)) => "routing",
    }
}

impl Harness {
    fn accepting(&self) -> Vec<usize> {
        (0..self.model.size())
            .filter(|&k| self.model.workers[k].accepts())
            .collect()
    }

    fn report(&mut self, id: TaskId) {
        *self.reported.entry(id).or_insert(0) += 1;
    }

    fn die(&mut self, k: usize) -> Result<(), String> {
        let retired = self.model.workers[k].said_bye;
        let expected = self.model.die(k);
        let lost = self.sut.exit(k);
        for &id in &lost {
            self.report(id);
        }
        ensure!(
            lost == expected,
            "[exactly-once] worker {k} died: lost {lost:?}, expected {expected:?}"
        );
        self.decide(k, retired, false)?;
        self.epoch.clear();
        Ok(())
    }

    /// The restart policy decides about the dead `k`: the state as the reference does.
    fn decide(&mut self, k: usize, retired: bool, launch_failed: bool) -> Result<(), String> {
        let expected = self.model.decide_and_count(k, retired, launch_failed);
        let real = self
            .sut
            .decide_restart(k, self.model.now, retired, launch_failed);
        ensure!(
            real == expected,
            "[restart] worker {k} at tick {} (retired {retired}, launch failed \
             {launch_failed}): {real:?}, expected {expected:?}",
            self.model.now
        );
        Ok(())
    }

    /// A replacement of `k` is launched: the state grants the credit the reference expects.
    fn launch(&mut self, k: usize) -> Result<usize, String> {
        let (expected, given) = (
            self.model.replacement_credit(k),
            self.sut.replacement_credit(k),
        );
        ensure!(
            given == expected,
            "[credit] a replacement of worker {k} launched with {given} credit, expected \
             {expected} ({} outputs of earlier incarnations unread)",
            self.model.workers[k].unacked
        );
        Ok(given)
    }

    fn apply(&mut self, step: &Transition) -> Result<(), String> {
        let n = self.model.size();
        match *step {
            Transition::Submit | Transition::SubmitTo(_) => {
                let target = match *step {
                    Transition::SubmitTo(k) => Some(k % n),
                    _ => None,
                };
                let expected = self.model.submit(target);
                let real = self.sut.submit(target);
                let agree = agrees(&real, &expected);
                ensure!(
                    agree,
                    "[{}] submit({target:?}): {real:?}, expected {expected:?}",
                    label(&expected)
                );
                if let (Ok((k, _)), None) = (real, target) {
                    *self.epoch.entry(k).or_insert(0) += 1;
                }
            }
            Transition::Broadcast | Transition::BroadcastSticky(_) => {
                let (expected, real) = match *step {
                    Transition::BroadcastSticky(key) => (
                        self.model.broadcast_sticky(key),
                        self.sut.broadcast_sticky(key),
                    ),
                    _ => (self.model.broadcast(), self.sut.broadcast()),
                };
                let agree = agrees(&real, &expected);
                ensure!(
                    agree,
                    "[{}] {step:?}: {real:?}, expected {expected:?}",
                    label(&expected)
                );
            }
            Transition::Retire(k) => {
                let k = k % n;
                let (expected, real) = (self.model.retire(k), self.sut.retire(k));
                ensure!(
                    real == expected,
                    "[stop] retire({k}): {real}, expected {expected}"
                );
                if real {
                    self.epoch.clear();
                }
            }
            Transition::ExpectReplacement(k) => {
                let k = k % n;
                self.model.expect_replacement(k);
                self.sut.expect_replacement(k);
            }
            Transition::GiveUp(k) => {
                let k = k % n;
                if self.model.workers[k].replacing {
                    self.model.give_up(k);
                    self.sut.give_up(k);
                }
            }
            Transition::Deliver(k) => {
                let k = k % n;
                let w = &mut self.model.workers[k];
                if w.alive && w.ready {
                    w.delivered = w.sent.len();
                    let returned = self.sut.deliver(k);
                    let w = &mut self.model.workers[k];
                    ensure!(
                        returned == w.owed,
                        "[credit] worker {k} was sent {returned} credits, {} were owed",
                        w.owed
                    );
                    w.held_credit += std::mem::take(&mut w.owed);
                }
            }
            Transition::Finish(k, pick, how) => {
                let k = k % n;
                let w = &self.model.workers[k];
                let candidates = w.received_holding();
                if w.alive && !candidates.is_empty() {
                    let id = candidates[pick % candidates.len()];
                    self.sut
                        .done(k, id)
                        .map_err(|v| format!("[exactly-once] end of task {id}: {v}"))?;
                    self.report(id);
                    let accepted = self.model.workers[k].accepts();
                    self.model.finish(k, id, how);
                    if accepted && !self.model.workers[k].accepts() {
                        // Recycled: the set of workers taking tasks changed.
                        self.epoch.clear();
                    }
                }
            }
            Transition::FinishUnknown(k) => {
                let k = k % n;
                if self.model.workers[k].alive {
                    let id = self.model.next_id + 1_000_000;
                    let real = self.sut.done(k, id);
                    ensure!(
                        matches!(real, Err(Violation::UnknownTask { .. })),
                        "[protocol] end of unknown task {id}: {real:?}"
                    );
                }
            }
            Transition::Emit(k) => {
                let k = k % n;
                let w = &mut self.model.workers[k];
                if w.alive && w.ready && !w.said_bye {
                    // Tagged with a task it holds and has received, if any.
                    let task = w.received_holding().first().copied();
                    if w.held_credit > 0 {
                        w.held_credit -= 1;
                    } else {
                        w.honest = false;
                    }
                    let real = self.sut.output(k, task);
                    let limit = self.model.credit
                        + match self.model.phase {
                            RefPhase::Running => 0,
                            _ => STOP_BACKLOG,
                        };
                    if self.model.workers[k].unacked < limit {
                        real.map_err(|v| format!("[credit] an output within credit: {v}"))?;
                        self.model.workers[k].unacked += 1;
                    } else {
                        ensure!(
                            matches!(real, Err(Violation::CreditExceeded { .. })),
                            "[credit] an output beyond credit {limit}: {real:?}"
                        );
                        // The driver ends the link of a worker that breaks the protocol.
                        self.die(k)?;
                    }
                }
            }
            Transition::EmitForeign(k) => {
                let k = k % n;
                let w = &self.model.workers[k];
                if w.alive && w.ready && !w.said_bye {
                    // Another worker's task if there is one, else an ended or unknown one.
                    let task = (0..n)
                        .filter(|&j| j != k)
                        .find_map(|j| self.model.workers[j].holding.first().copied())
                        .or_else(|| self.model.ended.keys().next().copied())
                        .unwrap_or(self.model.next_id + 1_000_000);
                    let real = self.sut.output(k, Some(task));
                    ensure!(
                        matches!(real, Err(Violation::ForeignOutput { .. })),
                        "[ownership] worker {k} emitted an output for task {task}: {real:?}"
                    );
                    self.die(k)?;
                }
            }
            Transition::Ack(k) => {
                let k = k % n;
                let w = &mut self.model.workers[k];
                // Outputs of a dead incarnation are read too; their credit stays with the number.
                if w.unacked > 0 {
                    w.unacked -= 1;
                    if w.alive && !w.said_bye {
                        w.owed += 1;
                    }
                    self.sut.ack(k);
                }
            }
            Transition::Die(k) => {
                let k = k % n;
                if self.model.workers[k].alive {
                    self.die(k)?;
                }
            }
            Transition::Launch(k) => {
                let k = k % n;
                if !self.model.workers[k].alive
                    && self.model.phase == RefPhase::Running
                    && self.launched[k].is_none()
                {
                    self.launched[k] = Some(self.launch(k)?);
                }
            }
            Transition::Replace(k) => {
                let k = k % n;
                if !self.model.workers[k].alive && self.model.phase == RefPhase::Running {
                    let given = match self.launched[k].take() {
                        Some(given) => given,
                        None => self.launch(k)?,
                    };
                    let expected = self.model.replace(k, given);
                    let (generation, replayed) = self.sut.replace(k, given);
                    ensure!(
                        generation == self.model.workers[k].generation,
                        "[protocol] replacement generation {generation}"
                    );
                    ensure!(
                        replayed == expected,
                        "[order] replayed {replayed:?}, expected {expected:?}"
                    );
                    self.epoch.clear();
                }
            }
            Transition::LaunchFails(k) => {
                let k = k % n;
                if !self.model.workers[k].alive && self.model.workers[k].replacing {
                    self.decide(k, false, true)?;
                }
            }
            Transition::Abandon => {
                // The driver abandons a launch only once a stop began.
                if self.model.phase != RefPhase::Running && self.model.launches > 0 {
                    self.model.launches -= 1;
                    self.sut.abandon_launch();
                }
            }
            Transition::Revive(k, on_request) => {
                let k = k % n;
                let expected = self.model.revive(k, on_request);
                let real = self.sut.revive(k, self.model.now, on_request);
                ensure!(
                    real == expected,
                    "[restart] revive worker {k} at tick {} (on request {on_request}): {real}, \
                     expected {expected}",
                    self.model.now
                );
            }
            Transition::Ready(k) => {
                let k = k % n;
                let now = self.model.now;
                let w = &mut self.model.workers[k];
                if w.alive && !w.ready {
                    w.ready = true;
                    self.model.histories[k].ready_at = Some(now);
                    self.model.histories[k].served = false;
                    self.sut
                        .ready(k, now)
                        .map_err(|v| format!("[protocol] handshake: {v}"))?;
                }
            }
            Transition::Bye(k) => {
                let k = k % n;
                let w = &self.model.workers[k];
                if w.alive {
                    let valid = w.sent.contains(&Sent::Stop) && w.holding.is_empty() && !w.said_bye;
                    let real = self.sut.bye(k);
                    if valid {
                        real.map_err(|v| format!("[stop] a valid goodbye: {v}"))?;
                        self.model.workers[k].said_bye = true;
                        self.die(k)?;
                    } else {
                        ensure!(
                            matches!(real, Err(Violation::EarlyBye { .. })),
                            "[stop] an early goodbye: {real:?}"
                        );
                    }
                }
            }
            Transition::BeginStop(grace) => {
                self.model.begin_stop(grace);
                self.sut.begin_stop(self.model.now, grace);
            }
            Transition::Advance(ticks) => {
                let expected = self.model.advance(ticks);
                let kill = self.sut.timeout(self.model.now);
                ensure!(
                    kill == expected,
                    "[stop] at tick {}: kill {kill:?}, expected {expected:?}",
                    self.model.now
                );
                for k in kill {
                    self.die(k)?;
                }
            }
        }
        Ok(())
    }

    fn check_invariants(&self) -> Result<(), String> {
        let state = self.sut.state();
        let n = self.model.size();
        // 1. Exactly once, and held until then.
        for (&id, &worker) in &self.model.accepted {
            let times = self.reported.get(&id).copied().unwrap_or(0);
            if self.model.ended.contains_key(&id) {
                ensure!(times == 1, "[exactly-once] task {id} ended {times} times");
                ensure!(
                    !state.holds(worker, id),
                    "[exactly-once] worker {worker} still holds ended task {id}"
                );
            } else {
                ensure!(
                    times == 0,
                    "[exactly-once] task {id} reported ended but should still run"
                );
                ensure!(
                    state.holds(worker, id),
                    "[exactly-once] task {id} is neither held nor ended"
                );
            }
        }
        for k in 0..n {
            // 2. Capacity and credit.
            ensure!(
                state.held(k) <= self.model.capacity,
                "[capacity] worker {k} holds {} tasks",
                state.held(k)
            );
            let extra = match self.model.phase {
                RefPhase::Running => 0,
                _ => STOP_BACKLOG,
            };
            ensure!(
                state.unacked(k) <= self.model.credit + extra,
                "[credit] worker {k} has {} unacked",
                state.unacked(k)
            );
            ensure!(
                state.unacked(k) == self.model.workers[k].unacked,
                "[credit] worker {k} has {} unacked, expected {}",
                state.unacked(k),
                self.model.workers[k].unacked
            );
            // The number's credit is neither granted twice nor lost across its incarnations:
            // what its outputs hold, what is owed and what the worker holds add up to it.
            let w = &self.model.workers[k];
            if w.alive && !w.said_bye && w.honest {
                ensure!(
                    w.unacked + w.owed + w.held_credit == self.model.credit + w.extra_credit,
                    "[credit] worker {k}: {} unacked + {} owed + {} held is not its credit {} + \
                     {} granted by the stop",
                    w.unacked,
                    w.owed,
                    w.held_credit,
                    self.model.credit,
                    w.extra_credit
                );
            }
            // 4. Each worker received exactly what was queued for it, in order.
            let w = &self.model.workers[k];
            if w.alive {
                let received: Vec<Sent> = self.sut.received[k]
                    .iter()
                    .map(|t| match t {
                        Transmit::Task { id, .. } => Sent::Task(*id),
                        _ => Sent::Stop,
                    })
                    .collect();
                ensure!(
                    received == w.sent[..w.delivered],
                    "[order] worker {k} received {received:?}, queued {:?}",
                    &w.sent[..w.delivered]
                );
            }
        }
        // 3. Round-robin balance while the live set is unchanged.
        let live: Vec<usize> = (0..n)
            .filter(|&k| self.model.workers[k].accepts())
            .collect();
        let counts: Vec<usize> = live
            .iter()
            .map(|k| self.epoch.get(k).copied().unwrap_or(0))
            .collect();
        if let (Some(max), Some(min)) = (counts.iter().max(), counts.iter().min()) {
            ensure!(
                max - min <= 1,
                "[round-robin] round-robin shares {:?} over live workers {live:?}",
                counts
            );
        }
        // 5. Stop.
        let stopped = self.model.stopped();
        ensure!(
            state.is_stopped() == stopped,
            "[stop] stopped: {}, expected {stopped}",
            state.is_stopped()
        );
        if stopped {
            ensure!(
                self.model.ended.len() == self.model.accepted.len(),
                "[stop] stopped with {} of {} tasks ended",
                self.model.ended.len(),
                self.model.accepted.len()
            );
        }
        Ok(())
    }
}

/// Runs `case` against the state built with `mutation`; `Err` says which step broke what.
pub fn check(case: &Case, mutation: Mutation) -> Result<(), String> {
    let mut h = Harness {
        model: Reference::new(case.workers, case.capacity, case.credit),
        sut: Sut::new(case.workers, case.capacity, case.credit, mutation),
        reported: BTreeMap::new(),
        epoch: BTreeMap::new(),
        launched: vec![None; case.workers],
    };
    for (i, step) in case.transitions.iter().enumerate() {
        let accepting = h.accepting();
        h.apply(step)
            .and_then(|()| {
                // Round-robin balance holds while the set of accepting workers stays the same.
                if h.accepting() != accepting {
                    h.epoch.clear();
                }
                h.check_invariants()
            })
            .map_err(|e| format!("step {i} ({step:?}): {e}"))?;
    }
    Ok(())
}
