//! Model checks of the sans-IO pool state: the real state against the reference, and proof
//! that each check catches a deliberate fault.

mod users_worker;

use looppool_testkit::members;
use looppool_testkit::model::{case_count, cases, check, Mutation};
use looppool_testkit::sim::{self, scenarios, Consumer, Job, Op, Scenario, STOP_TIMEOUT};
use proptest::test_runner::{
    Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestRng, TestRunner,
};

/// Steps per case.
const STEPS: usize = 200;

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..Config::default()
    }
}

proptest::proptest! {
    #![proptest_config(config(case_count("LOOPPOOL_MODEL_CASES", 2_000)))]

    /// The real state answers every transition as the reference does and keeps every invariant.
    #[test]
    fn the_state_matches_the_reference_and_keeps_every_invariant(case in cases(STEPS)) {
        check(&case, Mutation::None).map_err(TestCaseError::fail)?;
    }
}

/// Runs the model check against a faulty state, from a fixed seed, and returns what it found.
fn hunt(mutation: Mutation) -> Option<String> {
    hunt_with(cases(STEPS), |case| check(&case, mutation))
}

/// Runs `check` over 5,000 cases of `strategy` from a fixed seed; the first failure found.
fn hunt_with<S: proptest::strategy::Strategy>(
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), String>,
) -> Option<String> {
    let config = Config {
        cases: 5_000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    match runner.run(&strategy, |case| check(case).map_err(TestCaseError::fail)) {
        Ok(()) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// Each fault must be caught by a check of one of the invariants it breaks (which one finds
/// it first depends on the cases the seed generates).
macro_rules! caught {
    ($($name:ident: $mutation:ident => $($expect:literal)|+),* $(,)?) => {$(
        #[test]
        fn $name() {
            let found = hunt(Mutation::$mutation)
                .unwrap_or_else(|| panic!("the model check missed {:?}", Mutation::$mutation));
            assert!(
                [$($expect),+].iter().any(|label| found.contains(label)),
                "{:?} was caught, but as: {found}",
                Mutation::$mutation
            );
        }
    )*};
}

caught! {
    a_task_reported_lost_twice_is_caught: LoseTwice => "[exactly-once]",
    a_lost_task_never_reported_is_caught: ForgetLoss => "[exactly-once]",
    a_worker_over_capacity_is_caught: ExtraCapacity => "[capacity]",
    an_output_beyond_credit_is_caught: ExtraCredit => "[credit]",
    unfair_round_robin_is_caught: RouteToZero => "[round-robin]" | "[least-loaded]" | "[retry]",
    least_loaded_routing_that_rotates_is_caught: IgnoreLoad => "[least-loaded]" | "[retry]",
    ignored_cancellations_are_caught: IgnoreCancel => "[cancel]",
    a_worker_that_keeps_a_cancelled_task_forever_is_caught: NoCancelGrace => "[cancel]",
    ignored_deadlines_are_caught: IgnoreDeadline => "[deadline]",
    delivery_out_of_order_is_caught: ReorderDelivery => "[order]",
    submissions_accepted_after_stop_are_caught: IgnoreStop => "[stop]" | "[order]" | "[restart]" | "[credit]",
    sticky_broadcasts_a_replacement_never_gets_are_caught: ForgetSticky => "[order]",
    a_retirement_that_never_begins_is_caught: IgnoreRetire => "[order]" | "[round-robin]" | "[recycle]",
    fresh_credit_for_a_replacement_is_caught: FreshReplacementCredit => "[credit]",
    credit_lost_while_a_replacement_launched_is_caught: ForgetOwedCredit => "[credit]",
    credits_that_only_ride_with_frames_are_caught: AcksOnlyWithFrames => "[credit]",
    credits_sent_only_in_batches_are_caught: AcksOnlyInBatches => "[credit]",
    outputs_for_other_workers_tasks_are_caught: AcceptForeignOutputs => "[ownership]",
    every_death_counted_as_a_quick_failure_is_caught: EveryDeathCounts => "[restart]" | "[stop]",
    retirements_counted_as_failures_are_caught: RetirementsCount => "[restart]",
    a_stop_that_grants_no_backlog_is_caught: NoStopBacklog => "[credit]",
    a_worker_never_recycled_is_caught: NeverRecycle => "[order]" | "[round-robin]" | "[routing]" | "[capacity]" | "[recycle]",
    a_task_retried_beyond_its_retries_is_caught: ExtraRetry => "[retry]" | "[exactly-once]",
    a_task_never_retried_is_caught: NoRetry => "[retry]" | "[exactly-once]",
    retries_forgotten_at_the_stop_are_caught: ForgetWaitingRetries => "[retry]" | "[stop]" | "[exactly-once]",
    a_stall_judged_too_early_is_caught: StallEarly => "[stall]",
    memory_never_judged_is_caught: IgnoreMemory => "[recycle]",
}

proptest::proptest! {
    #![proptest_config(config(case_count("LOOPPOOL_MODEL_CASES", 2_000)))]

    /// The placement over members that come and go answers as the reference does and keeps
    /// every invariant.
    #[test]
    fn member_placement_matches_the_reference_and_keeps_every_invariant(
        case in members::cases(STEPS),
    ) {
        members::check(&case, members::Mutation::None).map_err(TestCaseError::fail)?;
    }
}

/// Each fault planted in the placement over members is caught, by a check of an invariant it
/// breaks.
#[test]
fn faults_planted_in_member_placement_are_caught() {
    use members::Mutation as M;
    let expected = [
        (M::ExtraBacklog, &["[backlog]"][..]),
        (M::ForgetEnd, &["[exactly-once]", "[backlog]"][..]),
        (M::IgnoreLeave, &["[exactly-once]", "[routing]"][..]),
        (M::NoGiveUp, &["[deliveries]"][..]),
        (M::IgnoreClose, &["[stop]"][..]),
        (M::RouteToFirst, &["[round-robin]", "[targeted]"][..]),
        (M::StuckTurn, &["[round-robin]"][..]),
        (M::MoveIgnoresBacklog, &["[round-robin]", "[backlog]"][..]),
        (M::TargetedMoves, &["[targeted]"][..]),
        (M::EndKeepsPlace, &["[backlog]"][..]),
        (M::CancelIsEnd, &["[exactly-once]", "[backlog]"][..]),
        (M::CancelledMoves, &["[cancel]"][..]),
        (M::FrozenClock, &["[wait]"][..]),
        (M::WaitFromFirst, &["[wait]"][..]),
        (M::BusyKeepsWait, &["[wait]"][..]),
        (M::CancelFreesPlace, &["[backlog]"][..]),
    ];
    for (mutation, labels) in expected {
        let found = hunt_with(members::cases(STEPS), |case| {
            members::check(&case, mutation)
        })
        .unwrap_or_else(|| panic!("the model check missed {mutation:?}"));
        assert!(
            labels.iter().any(|l| found.contains(l)),
            "{mutation:?} was caught, but as: {found}"
        );
    }
}

#[test]
fn the_same_seed_generates_the_same_cases() {
    use proptest::strategy::{Strategy, ValueTree};
    let generate = || {
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::deterministic_rng(RngAlgorithm::ChaCha),
        );
        (0..50)
            .map(|_| {
                cases(STEPS)
                    .new_tree(&mut runner)
                    .expect("a case")
                    .current()
            })
            .collect::<Vec<_>>()
    };
    let (a, b) = (generate(), generate());
    assert_eq!(a, b);
    assert!(
        a.windows(2).any(|w| w[0] != w[1]),
        "the generator produced one case fifty times"
    );
}

proptest::proptest! {
    #![proptest_config(config(case_count("LOOPPOOL_SIM_CASES", 300)))]

    /// Whole pools in the simulation, under any schedule: no deadlock, every accepted task ends
    /// by the time stop returns, every completed task's outputs were delivered in order, and
    /// nothing is lost unless a worker was killed or the stop deadline passed.
    #[test]
    fn simulated_pools_keep_their_promises_under_any_schedule(
        scenario in scenarios(40),
        seed in proptest::prelude::any::<u64>(),
    ) {
        sim::run(&scenario, seed, STOP_TIMEOUT).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn the_same_seed_replays_the_same_simulation() {
    use proptest::strategy::{Strategy, ValueTree};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let mut differs = false;
    for seed in 0..20u64 {
        let scenario = scenarios(40)
            .new_tree(&mut runner)
            .expect("a scenario")
            .current();
        let first = sim::run(&scenario, seed, STOP_TIMEOUT).expect("a clean run");
        let again = sim::run(&scenario, seed, STOP_TIMEOUT).expect("a clean run");
        assert_eq!(
            first, again,
            "seed {seed} replayed differently for {scenario:?}"
        );
        differs |= sim::run(&scenario, seed + 1_000, STOP_TIMEOUT).expect("a clean run") != first;
    }
    assert!(
        differs,
        "no seed changed any schedule: the seed does not reach the scheduler"
    );
}

#[test]
fn a_stop_whose_deadline_never_comes_is_reported_as_hung() {
    // A consumer that never acknowledges keeps the worker waiting for credit (with no stop
    // backlog to spend); only the stop deadline can end that, and here it lies beyond the
    // simulation's limit.
    let scenario = Scenario {
        workers: 1,
        capacity: 1,
        credit: 1,
        concurrency: 1,
        retries: 0,
        stop_backlog: 0,
        respawn: false,
        recycle_after: None,
        consumer: Consumer::Never,
        ops: vec![Op::Submit(Job::Emit(3))],
    };
    let hung = sim::run(&scenario, 7, sim::LIMIT * 2).expect_err("the run cannot finish");
    assert!(hung.contains("still running after"), "{hung}");
    // With a deadline inside the limit the same run ends, killing the worker.
    let trace = sim::run(&scenario, 7, STOP_TIMEOUT).expect("the deadline ends it");
    assert!(trace.iter().any(|t| t.contains("killed [0]")), "{trace:?}");
}
