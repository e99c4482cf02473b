//! The inputs the model checks apply, and the strategy that generates them.

use proptest::prelude::*;

/// How a worker reports the end of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `process` returned `Ok`.
    Completed,
    /// `process` returned an error.
    Failed,
    /// `process` panicked.
    Panicked,
}

/// One step of a run. Worker numbers are taken modulo the pool's size; `pick` chooses among
/// the tasks a worker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Round-robin submission.
    Submit,
    /// Submission to a worker.
    SubmitTo(usize),
    /// Submission by key (the worker number is the key modulo the pool's size).
    SubmitKeyed(u8),
    /// Round-robin submission with a deadline this many ticks away.
    SubmitWithin(u64),
    /// A task a worker holds (or a retry waiting) is cancelled.
    Cancel(usize, usize),
    /// A worker reports the end of a task cancelled after it received it.
    FinishCancelled(usize, usize),
    /// A broadcast.
    Broadcast,
    /// A sticky broadcast under one of a few keys.
    BroadcastSticky(u8),
    /// A worker is asked to retire (recycling).
    Retire(usize),
    /// A relaunch the state decided is started, once its backoff passed (with the credit the
    /// state grants it), but not yet registered.
    Launch(usize),
    /// A replacement's launch fails: the restart policy decides again.
    LaunchFails(usize),
    /// A given-up worker number is tried again: on request, or when its time came.
    Revive(usize, bool),
    /// A replacement under way is abandoned because a stop began.
    Abandon,
    /// The link writes everything queued for a worker (the worker takes its tasks).
    Deliver(usize),
    /// A worker ends one of the tasks it received.
    Finish(usize, usize, Ending),
    /// A worker reports the end of a task it does not hold.
    FinishUnknown(usize),
    /// A worker emits an output (accepted within its credit, a violation beyond it).
    Emit(usize),
    /// A worker emits an output for a task it does not hold.
    EmitForeign(usize),
    /// The consumer acknowledges one of a worker's outputs.
    Ack(usize),
    /// A worker dies with whatever it holds.
    Die(usize),
    /// A dead worker is replaced under the same number.
    Replace(usize),
    /// A replacement finishes its handshake.
    Ready(usize),
    /// A worker says goodbye (valid only once it drained after the poison pill).
    Bye(usize),
    /// A graceful stop begins, with this grace in ticks.
    BeginStop(u64),
    /// Time passes by this many ticks.
    Advance(u64),
    /// A worker's loop is measured silent for this many ticks.
    Silence(usize, u64),
    /// A worker's memory is measured over the limit (`true`) or at it.
    Memory(usize, bool),
    /// The pool is killed.
    KillAll,
}

/// A pool's shape and a run of transitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Workers.
    pub workers: usize,
    /// Unfinished tasks one worker may hold.
    pub capacity: usize,
    /// Outputs one worker may have unacknowledged.
    pub credit: usize,
    /// Untargeted submissions go to the least-loaded worker (else round-robin).
    pub least_loaded: bool,
    /// The run.
    pub transitions: Vec<Transition>,
}

fn transition() -> impl Strategy<Value = Transition> {
    let w = 0usize..8;
    prop_oneof![
        6 => Just(Transition::Submit),
        3 => w.clone().prop_map(Transition::SubmitTo),
        2 => any::<u8>().prop_map(Transition::SubmitKeyed),
        2 => (1u64..20).prop_map(Transition::SubmitWithin),
        2 => (w.clone(), 0usize..8).prop_map(|(k, p)| Transition::Cancel(k, p)),
        2 => (w.clone(), 0usize..8).prop_map(|(k, p)| Transition::FinishCancelled(k, p)),
        1 => Just(Transition::Broadcast),
        1 => (0u8..3).prop_map(Transition::BroadcastSticky),
        1 => w.clone().prop_map(Transition::Retire),
        1 => w.clone().prop_map(Transition::Launch),
        2 => w.clone().prop_map(Transition::LaunchFails),
        1 => (w.clone(), any::<bool>()).prop_map(|(k, r)| Transition::Revive(k, r)),
        1 => Just(Transition::Abandon),
        5 => w.clone().prop_map(Transition::Deliver),
        6 => (w.clone(), 0usize..8, prop_oneof![
                4 => Just(Ending::Completed),
                1 => Just(Ending::Failed),
                1 => Just(Ending::Panicked),
            ]).prop_map(|(k, pick, e)| Transition::Finish(k, pick, e)),
        1 => w.clone().prop_map(Transition::FinishUnknown),
        4 => w.clone().prop_map(Transition::Emit),
        1 => w.clone().prop_map(Transition::EmitForeign),
        4 => w.clone().prop_map(Transition::Ack),
        1 => w.clone().prop_map(Transition::Die),
        1 => w.clone().prop_map(Transition::Replace),
        2 => w.clone().prop_map(Transition::Ready),
        2 => w.clone().prop_map(Transition::Bye),
        1 => (0u64..20).prop_map(Transition::BeginStop),
        2 => (0u64..10).prop_map(Transition::Advance),
        1 => (w.clone(), 0u64..10).prop_map(|(k, t)| Transition::Silence(k, t)),
        1 => (w.clone(), any::<bool>()).prop_map(|(k, b)| Transition::Memory(k, b)),
        1 => Just(Transition::KillAll),
    ]
}

/// Pools of 1 to 4 workers with small capacities and credits, and up to `max_len` steps.
pub fn cases(max_len: usize) -> impl Strategy<Value = Case> {
    (
        1usize..=4,
        1usize..=3,
        1usize..=3,
        any::<bool>(),
        prop::collection::vec(transition(), 0..max_len),
    )
        .prop_map(
            |(workers, capacity, credit, least_loaded, transitions)| Case {
                workers,
                capacity,
                credit,
                least_loaded,
                transitions,
            },
        )
}
