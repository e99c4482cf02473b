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
//!    credits given back go with a frame sent anyway, in batches of half the credit, or at
//!    once for a stop's backlog, a replacement, or a worker with less than half its credit
//!    left: a worker that used up its credit is never owed any after a delivery;
//!    an output for a task its worker does not hold is a violation;
//! 3. round-robin gives each live worker `⌊k/n⌋` or `⌈k/n⌉` of `k` submissions while the set of
//!    live workers stays the same (and picks the worker the reference picks);
//! 4. each worker receives exactly what was queued for it, in order, so a broadcast reaches each
//!    live worker once, behind what was sent to it before;
//! 5. once a stop begins every submission is refused, and the pool is stopped exactly when every
//!    worker has exited, at which point every accepted task has ended.
//!
//! A [`Mutation`] plants a fault in the state; the testkit's tests prove that each is caught.

mod cancel;
mod invariants;
mod reference;
mod retry;
mod sut;
mod transition;

pub use cancel::CANCEL_GRACE;
pub use reference::{
    End, RefHistory, RefPhase, RefRefusal, RefRestart, RefWorker, Reference, Sent, MEMORY_LIMIT,
    POLICY, RECYCLE_AFTER, RETRIES, STALL_LIMIT, STOP_BACKLOG,
};
pub use retry::{RefEvent, RefKill, RefLoss};
pub use sut::{Mutation, Sut};
pub use transition::{cases, Case, Ending, Transition};

use looppool_core::state::{Refusal, Violation};
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
    /// Per worker number, the tick from which a relaunch the state decided may start.
    due: Vec<Option<u64>>,
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
fn label<T>(expected: &Result<T, RefRefusal>, least_loaded: bool) -> &'static str {
    match expected {
        Ok(_) if least_loaded => "least-loaded",
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

    /// The driver saw worker `k` exit: the state decides about its tasks and its number as the
    /// reference does.
    fn die(&mut self, k: usize) -> Result<(), String> {
        let retired = self.model.workers[k].said_bye;
        if !self.model.die(k) {
            return Ok(());
        }
        self.sut.exit(k, self.model.now, retired);
        self.model.decide_and_count(k, retired, false);
        self.epoch.clear();
        self.sync()
    }

    /// The state's decisions since the last step must be the reference's, in the same order;
    /// then the driver's share of them is carried out (kills end in exits).
    fn sync(&mut self) -> Result<(), String> {
        let real = self.sut.events();
        let expected = std::mem::take(&mut self.model.events);
        if real != expected {
            let at = real
                .iter()
                .zip(&expected)
                .take_while(|(r, e)| r == e)
                .count();
            let label = [expected.get(at), real.get(at)]
                .into_iter()
                .flatten()
                .map(RefEvent::label)
                .min_by_key(|l| {
                    ["exactly-once", "retry"]
                        .iter()
                        .position(|p| p == l)
                        .unwrap_or(9)
                })
                .unwrap_or("protocol");
            return Err(format!(
                "[{label}] at tick {}: the state decided {real:?}, expected {expected:?}",
                self.model.now
            ));
        }
        let mut kills = Vec::new();
        for event in real {
            match event {
                RefEvent::Lost(_, id, _) | RefEvent::Expired(_, id) => self.report(id),
                RefEvent::Retried(id, _, to) if self.model.routes[&id].is_none() => {
                    *self.epoch.entry(to).or_insert(0) += 1;
                }
                RefEvent::Relaunch(k, after) => self.due[k] = Some(self.model.now + after),
                RefEvent::Kill(k, _) => kills.push(k),
                _ => {}
            }
        }
        for k in kills {
            self.die(k)?;
        }
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
            Transition::Submit | Transition::SubmitTo(_) | Transition::SubmitKeyed(_) => {
                let target = match *step {
                    Transition::SubmitTo(k) => Some(k % n),
                    Transition::SubmitKeyed(key) => Some(usize::from(key) % n),
                    _ => None,
                };
                let expected = self.model.submit(target);
                let real = match *step {
                    Transition::SubmitKeyed(key) => self.sut.submit_keyed(key),
                    _ => self.sut.submit(target),
                };
                let agree = agrees(&real, &expected);
                ensure!(
                    agree,
                    "[{}] {step:?}: {real:?}, expected {expected:?}",
                    label(&expected, self.model.least_loaded)
                );
                if let (Ok((k, _)), None) = (real, target) {
                    *self.epoch.entry(k).or_insert(0) += 1;
                }
            }
            Transition::SubmitWithin(ticks) => {
                let expected = self.model.submit_within(None, ticks);
                let real = self.sut.submit_within(self.model.now, ticks);
                let agree = agrees(&real, &expected);
                ensure!(
                    agree,
                    "[{}] {step:?}: {real:?}, expected {expected:?}",
                    label(&expected, self.model.least_loaded)
                );
                if let Ok((k, _)) = real {
                    *self.epoch.entry(k).or_insert(0) += 1;
                }
            }
            Transition::Cancel(k, pick) => {
                let k = k % n;
                let holding = &self.model.workers[k].holding;
                let id = match holding.is_empty() {
                    false => holding[pick % holding.len()],
                    true => match self.model.deferred.get(pick) {
                        Some(&(id, _)) => id,
                        None => return Ok(()),
                    },
                };
                let expected = self.model.cancel(id);
                let real = self.sut.cancel(id, self.model.now);
                ensure!(
                    real == expected,
                    "[cancel] cancel task {id}: held by {real:?}, expected {expected:?}"
                );
                if real.is_some() {
                    self.report(id);
                }
                self.sync()?;
            }
            Transition::FinishCancelled(k, pick) => {
                let k = k % n;
                let w = &self.model.workers[k];
                let received: Vec<TaskId> = w
                    .cancelling
                    .iter()
                    .map(|&(id, _)| id)
                    .filter(|id| w.sent[..w.delivered].contains(&Sent::Task(*id)))
                    .collect();
                if w.alive && !received.is_empty() {
                    let id = received[pick % received.len()];
                    self.sut
                        .done(k, id)
                        .map_err(|v| format!("[cancel] end of cancelled task {id}: {v}"))?;
                    self.model.finish_cancelled(k, id);
                    self.sync()?;
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
                    label(&expected, self.model.least_loaded)
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
                self.sync()?;
            }
            Transition::Deliver(k) => {
                let k = k % n;
                let w = &mut self.model.workers[k];
                if w.alive && w.ready {
                    let frames = w.sent.len() > w.delivered;
                    w.delivered = w.sent.len();
                    let returned = self.sut.deliver(k);
                    ensure!(
                        self.sut.announced_what_it_delivered(k),
                        "[credit] worker {k}: has_transmit disagreed with what was delivered"
                    );
                    let due = self.model.credit_sent(k, frames);
                    let w = &mut self.model.workers[k];
                    ensure!(
                        returned == due,
                        "[credit] worker {k} was sent {returned} credits, {due} were due ({} \
                         owed)",
                        w.owed
                    );
                    w.owed -= due;
                    w.held_credit += due;
                    w.owed_urgent &= due == 0;
                    // Whatever the batching, a worker that used up its credit gets back all the
                    // consumer read: a consumer holding deliveries while it waits for more
                    // would otherwise wait forever.
                    ensure!(
                        !(w.honest && w.held_credit == 0 && w.owed > 0),
                        "[credit] worker {k} has no credit left and is owed {}",
                        w.owed
                    );
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
                    self.sync()?;
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
                    // Another worker's task if there is one, else an ended or unknown one (not one
                    // it was sent and that was cancelled since: it may still emit for that).
                    let mine = |id: &TaskId| w.cancelling.iter().any(|&(c, _)| c == *id);
                    let task = (0..n)
                        .filter(|&j| j != k)
                        .find_map(|j| self.model.workers[j].holding.first().copied())
                        .or_else(|| self.model.ended.keys().copied().find(|id| !mine(id)))
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
                let due = self.due[k].is_some_and(|t| self.model.now >= t);
                if due && self.model.phase == RefPhase::Running {
                    self.due[k] = None;
                    self.launched[k] = Some(self.launch(k)?);
                }
            }
            Transition::Replace(k) => {
                let k = k % n;
                if self.launched[k].is_some() && self.model.phase == RefPhase::Running {
                    let given = self.launched[k].take().expect("launched");
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
                    self.sync()?;
                }
            }
            Transition::LaunchFails(k) => {
                let k = k % n;
                if self.launched[k].take().is_some() {
                    self.sut.launch_failed(k, self.model.now);
                    self.model.decide_and_count(k, false, true);
                    self.sync()?;
                }
            }
            Transition::Abandon => {
                // The driver abandons a relaunch only once a stop began: before or while it
                // launches.
                let under_way =
                    (0..n).find(|&k| self.due[k].is_some() || self.launched[k].is_some());
                if let (false, Some(k)) = (self.model.phase == RefPhase::Running, under_way) {
                    self.due[k] = None;
                    self.launched[k] = None;
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
                self.sync()?;
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
                    let valid = w.sent.contains(&Sent::Stop)
                        && w.holding.is_empty()
                        && w.cancelling.is_empty()
                        && !w.said_bye;
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
                self.sync()?;
            }
            Transition::Advance(ticks) => {
                self.model.advance(ticks);
                self.sut.timeout(self.model.now);
                ensure!(
                    self.sut.timeout_settled(self.model.now),
                    "[clock] after handling tick {}, the next deadline is not later",
                    self.model.now
                );
                self.sync()?;
            }
            Transition::Silence(k, ticks) => {
                let k = k % n;
                self.model.silence(k, ticks);
                self.sut.silence(k, ticks);
                self.sync()?;
            }
            Transition::Memory(k, over) => {
                let k = k % n;
                let bytes = MEMORY_LIMIT + u64::from(over);
                let (expected, real) = (self.model.memory(k, bytes), self.sut.memory(k, bytes));
                ensure!(
                    real == expected,
                    "[recycle] worker {k} at {bytes} bytes: retiring {real}, expected {expected}"
                );
                if real {
                    self.epoch.clear();
                }
                self.sync()?;
            }
            Transition::KillAll => {
                self.model.begin_stop(0);
                self.model.kill_all(RefKill::Pool);
                self.sut.kill_all(self.model.now);
                self.sync()?;
            }
        }
        Ok(())
    }
}

/// Runs `case` against the state built with `mutation`; `Err` says which step broke what.
pub fn check(case: &Case, mutation: Mutation) -> Result<(), String> {
    let mut h = Harness {
        model: Reference {
            least_loaded: case.least_loaded,
            ..Reference::new(case.workers, case.capacity, case.credit)
        },
        sut: Sut::new(
            case.workers,
            case.capacity,
            case.credit,
            case.least_loaded,
            mutation,
        ),
        reported: BTreeMap::new(),
        epoch: BTreeMap::new(),
        launched: vec![None; case.workers],
        due: vec![None; case.workers],
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
