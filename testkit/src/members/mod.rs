//! Model check of [`Members`], the placement of a pool whose members come and go (the NATS
//! transport's parent): random runs of joins, departures, placements, broadcasts, ends, tasks
//! taken back and a stop, applied to the real state and to a reference, every answer compared
//! and the invariants of [`looppool_core::state::members`] checked after every step:
//!
//! - `[exactly-once]` every task is held by one member or waits until it ends, and ends once;
//! - `[backlog]` a member's backlog counts the tasks it holds, and no placement or move of a
//!   task taken back passes its limit;
//! - `[round-robin]` untargeted tasks go to the members in turn, tasks taken back to the next
//!   with room, as the reference picks; `[targeted]` a task for one member never moves to
//!   another;
//! - `[deliveries]` a task taken back after the most deliveries allowed is given up on;
//! - `[stop]` once closed, nothing is placed and nothing taken back waits for a member;
//! - `[wait]` a task waiting for a member waits from the moment its gone member's last task
//!   was taken back, or, once it found every member busy, from when it next finds none, and is
//!   given up on once offered past its wait with no member there;
//! - `[cancel]` a cancelled task stays with its member, in its backlog, until its end, and one
//!   taken back is dropped, never moved; one that waits ends at once.
//!
//! A [`Mutation`] plants a fault, in the calls made to the state or inside it (through the
//! core's `fault-injection` feature); the testkit's tests prove each is caught.

use checks::{invariants, take_back};
use looppool_core::state::members::{Cancelled, Fault, For, Members, TakenBack, Unplaced};
use looppool_core::TaskId;
use reference::Reference;
use std::time::{Duration, Instant};

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

mod checks;
mod reference;
mod steps;

pub use steps::{cases, Case, Step};

/// Members are named by small numbers.
type Key = u8;

/// Most deliveries a task gets in the checked pools.
pub const MAX_DELIVERIES: u32 = 3;

/// How long a task taken back waits for a member, in the checked pools (ms).
pub const WAIT_MS: u64 = 100;

/// The run's clock, from a fixed start: `ms` after it.
fn clock(ms: u64) -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now) + Duration::from_millis(ms)
}

/// A deliberate fault, to prove that the checks catch it. `None` is the real state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// The real state, unchanged.
    None,
    /// Members join with a backlog one larger than they asked for.
    ExtraBacklog,
    /// The first task to end keeps its place in its member's backlog.
    ForgetEnd,
    /// A departure is not told to the state: tasks keep going to the gone member.
    IgnoreLeave,
    /// Tasks come back with no deliveries counted: none is given up on.
    NoGiveUp,
    /// A stop is not told to the state.
    IgnoreClose,
    /// Untargeted tasks all go to the first member that joined.
    RouteToFirst,
    /// Planted in the state: untargeted tasks do not advance the turn.
    StuckTurn,
    /// Planted in the state: a task taken back goes to the member in turn, room or not.
    MoveIgnoresBacklog,
    /// Planted in the state: a task for one member is moved like any other.
    TargetedMoves,
    /// Planted in the state: an ended task keeps its place in its member's backlog.
    EndKeepsPlace,
    /// A cancel is told to the state as the task's end: its place is freed while its member
    /// still runs it.
    CancelIsEnd,
    /// Planted in the state: a cancelled task taken back is moved to another member.
    CancelledMoves,
    /// Waiting tasks are offered to the members with the clock stopped at the run's start:
    /// none is ever given up on.
    FrozenClock,
    /// Planted in the state: a task's wait starts when it is taken back, not when its gone
    /// member's last task was.
    WaitFromFirst,
    /// Planted in the state: a waiting task that finds every member busy keeps its wait rather
    /// than start it anew once it finds none.
    BusyKeepsWait,
    /// Planted in the state: a cancel frees the task's place in its member's backlog at once.
    CancelFreesPlace,
}

/// Runs `case` on the real state (with `mutation` planted) and on the reference; the first
/// difference or broken invariant, labelled with its invariant.
pub fn check(case: &Case, mutation: Mutation) -> Result<(), String> {
    let mut real = Members::<Key>::new(MAX_DELIVERIES, Duration::from_millis(WAIT_MS));
    let planted = match mutation {
        Mutation::StuckTurn => Some(Fault::StuckTurn),
        Mutation::MoveIgnoresBacklog => Some(Fault::MoveIgnoresBacklog),
        Mutation::TargetedMoves => Some(Fault::TargetedMoves),
        Mutation::EndKeepsPlace => Some(Fault::EndKeepsPlace),
        Mutation::CancelledMoves => Some(Fault::CancelledMoves),
        Mutation::WaitFromFirst => Some(Fault::WaitFromFirst),
        Mutation::BusyKeepsWait => Some(Fault::BusyKeepsWait),
        Mutation::CancelFreesPlace => Some(Fault::CancelFreesPlace),
        _ => None,
    };
    if let Some(fault) = planted {
        real.plant(fault);
    }
    let mut model = Reference::default();
    let mut next_id: TaskId = 0;
    let mut ended_first = false;
    for (n, step) in case.steps.iter().enumerate() {
        let at = || format!("step {n} ({step:?})");
        match *step {
            Step::Join(key, limit) => {
                let extra = usize::from(mutation == Mutation::ExtraBacklog);
                let joined = real.join(key, limit + extra);
                let expected = model.limit(key).is_none();
                ensure!(joined == expected, "[routing] {}: joined {joined}", at());
                if expected {
                    model.live.push((key, limit));
                }
            }
            Step::LeaveAll => {
                for key in model.live.iter().map(|(k, _)| *k).collect::<Vec<_>>() {
                    if mutation != Mutation::IgnoreLeave {
                        real.leave(&key);
                    }
                }
                model.live.clear();
                model.cursor = 0;
            }
            Step::Leave(key) => {
                let held = if mutation == Mutation::IgnoreLeave {
                    real.held_by(&key) > 0
                } else {
                    real.leave(&key)
                };
                if let Some(i) = model.live.iter().position(|(k, _)| *k == key) {
                    model.live.remove(i);
                    if i < model.cursor {
                        model.cursor -= 1;
                    }
                }
                ensure!(held == (model.held(key) > 0), "[exactly-once] {}", at());
            }
            Step::Place | Step::PlaceOn(_) => {
                next_id += 1;
                let target = match *step {
                    Step::PlaceOn(key) => Some(key),
                    _ => None,
                };
                let first = real.live().next().copied();
                let got = match (target, first) {
                    (None, Some(first)) if mutation == Mutation::RouteToFirst => {
                        real.place(next_id, For::Member(&first))
                    }
                    _ => real.place(next_id, target.as_ref().map_or(For::Any, For::Member)),
                };
                let expected = if model.closed {
                    Err(Unplaced::Closed)
                } else {
                    match target {
                        None if model.live.is_empty() => Err(Unplaced::NoMember),
                        None => {
                            let i = model.cursor % model.live.len();
                            let (key, limit) = model.live[i];
                            if model.held(key) < limit {
                                Ok(model.give(next_id, i, true))
                            } else {
                                Err(Unplaced::Full(key))
                            }
                        }
                        Some(key) => match model.limit(key) {
                            None => Err(Unplaced::Unknown),
                            Some(l) if model.held(key) >= l => Err(Unplaced::Full(key)),
                            Some(_) => {
                                let i = model.live.iter().position(|(k, _)| *k == key);
                                Ok(model.give(next_id, i.expect("live"), false))
                            }
                        },
                    }
                };
                let label = match (&got, &expected) {
                    _ if model.closed => "[stop]",
                    (Ok(_), Err(Unplaced::Full(_))) => "[backlog]",
                    _ => "[round-robin]",
                };
                ensure!(
                    got == expected,
                    "{label} {}: placed {got:?}, the reference {expected:?}",
                    at()
                );
                if let Ok(key) = got {
                    let limit = model.limit(key).unwrap_or(0);
                    let backlog = real.backlog(&key).unwrap_or(usize::MAX);
                    ensure!(
                        backlog <= limit,
                        "[backlog] {}: member {key} holds {backlog} of {limit}",
                        at()
                    );
                }
            }
            Step::Broadcast => {
                let mut id = next_id;
                let got = real.broadcast(|| {
                    id += 1;
                    id
                });
                let expected: Vec<(TaskId, Key)> = (0..model.live.len())
                    .map(|i| {
                        next_id += 1;
                        (next_id, model.give(next_id, i, false))
                    })
                    .collect();
                ensure!(got == expected, "[routing] {}: {got:?}", at());
            }
            Step::End(i) => {
                let ids: Vec<TaskId> = model.tasks.keys().copied().collect();
                if ids.is_empty() {
                    ensure!(real.end(next_id + 1).is_none(), "[exactly-once] {}", at());
                    continue;
                }
                let id = ids[i % ids.len()];
                let task = model.tasks.remove(&id).expect("listed");
                if mutation == Mutation::ForgetEnd && !ended_first {
                    ended_first = true;
                } else {
                    let got = real.end(id);
                    ensure!(got == Some(task.holder), "[exactly-once] {}: {got:?}", at());
                    ensure!(
                        real.end(id).is_none(),
                        "[exactly-once] {}: ended twice",
                        at()
                    );
                }
            }
            Step::TakeBack(i, deliveries) => {
                let gone: Vec<TaskId> = model
                    .tasks
                    .iter()
                    .filter(|(_, t)| !t.waiting && model.limit(t.holder).is_none())
                    .map(|(id, _)| *id)
                    .collect();
                let Some(&id) = gone.get(i % gone.len().max(1)) else {
                    continue;
                };
                let from = model.tasks[&id].holder;
                take_back(&mut real, &mut model, id, from, deliveries, mutation)
                    .map_err(|e| format!("{e} {}", at()))?;
            }
            Step::TakeBackFrom(i, from, deliveries) => {
                let ids: Vec<TaskId> = model.tasks.keys().copied().collect();
                let Some(&id) = ids.get(i % ids.len().max(1)) else {
                    continue;
                };
                take_back(&mut real, &mut model, id, from, deliveries, mutation)
                    .map_err(|e| format!("{e} {}", at()))?;
            }
            Step::Record(key) => {
                next_id += 1;
                real.record(next_id, key);
                model.record(next_id, key);
            }
            Step::PlaceWaiting(i) => {
                let waiting: Vec<TaskId> = model
                    .tasks
                    .iter()
                    .filter(|(_, t)| t.waiting)
                    .map(|(id, _)| *id)
                    .collect();
                let Some(&id) = waiting.get(i % waiting.len().max(1)) else {
                    continue;
                };
                let now = if mutation == Mutation::FrozenClock {
                    0
                } else {
                    model.now
                };
                let got = real.place_waiting(id, clock(now));
                let now = model.now;
                let expected = match model.move_on(id) {
                    // Its wait runs from when its gone member's last task came back, or from
                    // now if it has none: it found members busy, or never started one.
                    TakenBack::Waiting => {
                        let task = model.tasks.get_mut(&id).expect("waiting");
                        let until = *task.until.get_or_insert(now + WAIT_MS);
                        if now >= until {
                            TakenBack::Expired
                        } else {
                            TakenBack::Waiting
                        }
                    }
                    TakenBack::Busy => {
                        model.tasks.get_mut(&id).expect("waiting").until = None;
                        TakenBack::Busy
                    }
                    other => other,
                };
                let label = match (&got, &expected) {
                    (TakenBack::Expired, _) | (_, TakenBack::Expired) => "[wait]",
                    _ => "[stop]",
                };
                ensure!(
                    got == expected,
                    "{label} {}: {got:?}, the reference {expected:?}",
                    at()
                );
                if matches!(expected, TakenBack::Stopped | TakenBack::Expired) {
                    model.tasks.remove(&id);
                    ensure!(real.end(id).is_some(), "[exactly-once] {}", at());
                }
            }
            Step::Cancel(i) => {
                // Any task placed so far, ended ones included, or one never placed.
                let id = (i as TaskId) % (next_id + 1) + 1;
                if !model.tasks.contains_key(&id) {
                    ensure!(
                        real.cancel(id) == Cancelled::NotHeld,
                        "[cancel] {}: task {id} is not under way",
                        at()
                    );
                    continue;
                }
                let got = if mutation == Mutation::CancelIsEnd {
                    match real.end(id) {
                        Some(key) if !model.tasks[&id].waiting => Cancelled::Tell(key),
                        Some(_) => Cancelled::Ended,
                        None => Cancelled::NotHeld,
                    }
                } else {
                    real.cancel(id)
                };
                let expected = model.cancel(id);
                ensure!(
                    got == expected,
                    "[cancel] {}: {got:?}, the reference {expected:?}",
                    at()
                );
                ensure!(
                    real.cancel(id) == Cancelled::NotHeld,
                    "[cancel] {}: cancelled twice",
                    at()
                );
            }
            Step::Advance(ms) => model.now += ms,
            Step::Close => {
                if mutation != Mutation::IgnoreClose {
                    real.close();
                }
                model.closed = true;
            }
        }
        invariants(&real, &model).map_err(|e| format!("{e} after {}", at()))?;
    }
    Ok(())
}
