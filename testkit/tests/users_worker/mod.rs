//! The testkit on a user's own worker: `PoolCheck` passes a correct one and catches a planted
//! bug, shrunk to a minimal script.

use looppool_core::{async_trait, BoxError, Context, Failure, Worker};
use looppool_testkit::sim::PoolCheck;
use proptest::prelude::*;
use std::time::Duration;

/// Emits `0..n` after a nap of `n` × 10 ms on the worker's clock; with `BUGGY`, a task of 3
/// forgets its last output, the kind of bug a user's worker has.
struct Tally<const BUGGY: bool>;

#[async_trait(?Send)]
impl<const BUGGY: bool> Worker for Tally<BUGGY> {
    type Task = u8;
    type Output = u8;
    type Error = Failure;

    async fn init(_: &Context<u8>) -> Result<Self, BoxError> {
        Ok(Tally)
    }

    async fn process(&self, n: u8, ctx: &Context<u8>) -> Result<(), Failure> {
        ctx.sleep(Duration::from_millis(u64::from(n) * 10)).await;
        let last = if BUGGY && n == 3 { n - 1 } else { n };
        for i in 0..last {
            ctx.put(i).await?;
        }
        Ok(())
    }
}

/// The user's property: a task that completed on its first run emitted `0..n`.
fn emits_its_count<const BUGGY: bool>(
    run: &looppool_testkit::sim::Run<Tally<BUGGY>>,
) -> Result<(), TestCaseError> {
    for ran in &run.tasks {
        if ran.ended.is_ok() && ran.attempts == 1 {
            let expected: Vec<u8> = (0..ran.task).collect();
            prop_assert_eq!(&ran.outputs, &expected, "task {} ({})", ran.id, ran.task);
        }
    }
    Ok(())
}

#[test]
fn pool_check_passes_a_correct_worker() {
    PoolCheck::<Tally<false>>::new(0u8..6)
        .cases(48)
        .check(emits_its_count);
}

#[test]
fn pool_check_catches_a_planted_bug_and_shrinks_it_to_one_step() {
    shrinks_the_planted_bug_to_one_step(PoolCheck::new(0u8..6));
}

/// Seeds whose first failing scripts kept needless steps after proptest's own shrinking (a step
/// that could not go while a later kill was there stayed once the kill was gone): the check's
/// own deletions to a fixed point bring each down to the one step.
#[test]
fn shrinking_reaches_one_step_whatever_the_cases_were() {
    for seed in [1, 6, 9, 11, 15, 17] {
        shrinks_the_planted_bug_to_one_step(PoolCheck::new(0u8..6).rng_seed(seed));
    }
}

/// The same property written with `assert_eq!`, as users often write them: it fails by
/// panicking, and the failure is still shrunk and reported.
#[test]
fn a_property_that_panics_is_shrunk_and_reported_too() {
    shrinks_with(PoolCheck::new(0u8..6).rng_seed(1), |run| {
        for ran in &run.tasks {
            if ran.ended.is_ok() && ran.attempts == 1 {
                assert_eq!(ran.outputs, (0..ran.task).collect::<Vec<u8>>());
            }
        }
        Ok(())
    });
}

fn shrinks_the_planted_bug_to_one_step(check: PoolCheck<Tally<true>>) {
    shrinks_with(check, emits_its_count);
}

fn shrinks_with(
    check: PoolCheck<Tally<true>>,
    property: impl Fn(&looppool_testkit::sim::Run<Tally<true>>) -> Result<(), TestCaseError>,
) {
    let check = std::panic::AssertUnwindSafe(check.cases(256));
    let property = std::panic::AssertUnwindSafe(property);
    let failed = std::panic::catch_unwind(|| check.check(&*property))
        .expect_err("the planted bug went unnoticed");
    let message = failed
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(message.contains("minimal failing script"), "{message}");
    // Shrunk to the one step that shows it: a task of 3 (submitted, targeted or broadcast).
    let steps = message.split("):\n").nth(1).unwrap_or("");
    let placements = ["Submit(", "SubmitTo(", "Broadcast("]
        .iter()
        .map(|p| steps.matches(p).count())
        .sum::<usize>();
    assert_eq!(placements, 1, "{message}");
    assert!(steps.contains("3,"), "{message}");
    assert!(!steps.contains("Kill"), "{message}");
}

#[test]
fn one_script_runs_the_same_way_for_a_seed_in_a_plain_test() {
    use looppool_testkit::sim::{Reader, Step};
    let check = PoolCheck::<Tally<false>>::new(0u8..6);
    // Naps of minutes cost nothing: the clock is simulated.
    let script = [
        Step::Submit(5),
        Step::SubmitTo(1, 2),
        Step::Nap(60_000),
        Step::Broadcast(1),
        Step::Kill(0),
        Step::Submit(4),
    ];
    let summary = |seed| {
        let run = check
            .run(&script, Reader::Slow(7), seed)
            .expect("the pool keeps its promises");
        run.tasks
            .iter()
            .map(|r| (r.id, r.task, r.worker, r.outputs.clone(), r.ended.is_ok()))
            .collect::<Vec<_>>()
    };
    let first = summary(11);
    assert_eq!(first.len(), 5, "{first:?}");
    assert_eq!(first, summary(11));
    assert_eq!(first[0].3, vec![0, 1, 2, 3, 4], "{first:?}");
}
