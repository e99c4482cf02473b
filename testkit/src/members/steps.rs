//! The inputs of the model check of [`Members`](looppool_core::state::members::Members): steps
//! and the random runs made of them.

use super::{Key, WAIT_MS};
use proptest::prelude::*;

/// One input to the state.
#[derive(Debug, Clone)]
pub enum Step {
    /// Member `0` joins with a backlog of `1`.
    Join(Key, usize),
    /// Member `0` is gone.
    Leave(Key),
    /// Every member is gone.
    LeaveAll,
    /// A task for any member.
    Place,
    /// A task for member `0`.
    PlaceOn(Key),
    /// A broadcast.
    Broadcast,
    /// The task at this index (modulo the tasks under way) ends.
    End(usize),
    /// The task at this index among those held by gone members comes back after `1`
    /// deliveries.
    TakeBack(usize, u32),
    /// The waiting task at this index is offered to the members.
    PlaceWaiting(usize),
    /// A task for member `0` only, live or not (a joining member's sticky broadcast).
    Record(Key),
    /// The task at this index, any, comes back as if from member `1` after `2` deliveries:
    /// taken back only if that member is gone and holds it.
    TakeBackFrom(usize, Key, u32),
    /// The program cancels the task at this index (modulo the tasks under way).
    Cancel(usize),
    /// This many ms pass.
    Advance(u64),
    /// The pool stops.
    Close,
}

/// A random run.
#[derive(Debug, Clone)]
pub struct Case {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// Random runs of up to `max_len` steps over four member names.
pub fn cases(max_len: usize) -> impl Strategy<Value = Case> {
    let step = prop_oneof![
        3 => (0u8..4, 1usize..=3).prop_map(|(k, l)| Step::Join(k, l)),
        2 => (0u8..4).prop_map(Step::Leave),
        1 => Just(Step::LeaveAll),
        6 => Just(Step::Place),
        2 => (0u8..4).prop_map(Step::PlaceOn),
        1 => Just(Step::Broadcast),
        4 => any::<usize>().prop_map(Step::End),
        4 => (any::<usize>(), 0u32..=4).prop_map(|(i, d)| Step::TakeBack(i, d)),
        3 => any::<usize>().prop_map(Step::PlaceWaiting),
        1 => (0u8..4).prop_map(Step::Record),
        1 => (any::<usize>(), 0u8..4, 0u32..=4).prop_map(|(i, k, d)| Step::TakeBackFrom(i, k, d)),
        2 => any::<usize>().prop_map(Step::Cancel),
        3 => (0..=WAIT_MS).prop_map(Step::Advance),
    ];
    // A stop late in the run, or none: a stop early would leave little to check after it.
    let steps = prop::collection::vec(step, 0..max_len);
    (steps, 0..max_len * 2).prop_map(|(mut steps, close_at)| {
        if close_at < steps.len() {
            steps.insert(close_at, Step::Close);
        }
        Case { steps }
    })
}
