//! The checks of one step's answers and of the invariants after it.

use super::reference::Reference;
use super::{clock, Key, Mutation, MAX_DELIVERIES, WAIT_MS};
use looppool_core::state::members::{Members, TakenBack};
use looppool_core::TaskId;

/// Task `id` comes back from `from` after `deliveries` deliveries, on both sides.
pub(super) fn take_back(
    real: &mut Members<Key>,
    model: &mut Reference,
    id: TaskId,
    from: Key,
    deliveries: u32,
    mutation: Mutation,
) -> Result<(), String> {
    let counted = if mutation == Mutation::NoGiveUp {
        0
    } else {
        deliveries
    };
    let got = real.take_back(id, &from, counted, clock(model.now));
    let task = model.tasks[&id].clone();
    let expected = if task.waiting || task.holder != from || model.limit(from).is_some() {
        TakenBack::NotHeld
    } else if task.cancelled {
        TakenBack::Dropped
    } else if !task.any {
        TakenBack::Lost
    } else if deliveries >= MAX_DELIVERIES {
        TakenBack::GiveUp
    } else {
        model.move_on(id)
    };
    let label = match (&got, &expected) {
        (TakenBack::Dropped, _) | (_, TakenBack::Dropped) => "[cancel]",
        // Lost, or not, as if it were for one member when it was not, or the other way.
        (TakenBack::Lost, _) | (_, TakenBack::Lost) => "[targeted]",
        (_, expected) => match expected {
            TakenBack::GiveUp => "[deliveries]",
            TakenBack::Stopped => "[stop]",
            TakenBack::NotHeld => "[exactly-once]",
            _ => "[round-robin]",
        },
    };
    ensure!(
        got == expected,
        "{label} task {id} from {from}: {got:?}, the reference {expected:?} at"
    );
    if expected == TakenBack::Dropped {
        model.tasks.remove(&id);
        ensure!(
            real.end(id).is_none(),
            "[cancel] task {id}, dropped, still in the table"
        );
    }
    if matches!(
        expected,
        TakenBack::Lost | TakenBack::GiveUp | TakenBack::Stopped
    ) {
        model.tasks.remove(&id);
        ensure!(
            real.end(id) == Some(from),
            "[exactly-once] task {id} ended at"
        );
    }
    if expected != TakenBack::NotHeld {
        model.arm(from, WAIT_MS);
    }
    Ok(())
}

/// What must hold after every step.
pub(super) fn invariants(real: &Members<Key>, model: &Reference) -> Result<(), String> {
    ensure!(
        real.len() == model.tasks.len(),
        "[exactly-once] {} tasks under way, the reference {}",
        real.len(),
        model.tasks.len()
    );
    for (id, task) in &model.tasks {
        ensure!(
            real.holder(*id) == Some(&task.holder),
            "[exactly-once] task {id} held by {:?}, not {}",
            real.holder(*id),
            task.holder
        );
        ensure!(
            real.holds(*id, &task.holder) != task.waiting,
            "[exactly-once] task {id}: waiting is {}",
            task.waiting
        );
        let until = real.waits_until(*id);
        ensure!(
            until == task.until.map(clock),
            "[wait] task {id} waits until {until:?}, the reference {:?} ms",
            task.until
        );
        ensure!(
            real.is_cancelled(*id) == task.cancelled,
            "[cancel] task {id}: cancelled is {}",
            task.cancelled
        );
    }
    for (key, _) in &model.live {
        ensure!(
            real.backlog(key) == Some(model.held(*key)),
            "[backlog] member {key}: backlog {:?}, holding {}",
            real.backlog(key),
            model.held(*key)
        );
    }
    let live: Vec<Key> = real.live().copied().collect();
    let expected: Vec<Key> = model.live.iter().map(|(k, _)| *k).collect();
    ensure!(
        live == expected,
        "[routing] live members {live:?}, the reference {expected:?}"
    );
    Ok(())
}
