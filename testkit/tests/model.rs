//! Model checks of the sans-IO pool state: the real state against the reference, and proof
//! that each check catches a deliberate fault.

use looppool_testkit::model::{case_count, cases, check, Mutation};
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
    #![proptest_config(config(case_count(2_000)))]

    /// The real state answers every transition as the reference does and keeps every invariant.
    #[test]
    fn the_state_matches_the_reference_and_keeps_every_invariant(case in cases(STEPS)) {
        check(&case, Mutation::None).map_err(TestCaseError::fail)?;
    }
}

/// Runs the model check against a faulty state, from a fixed seed, and returns what it found.
fn hunt(mutation: Mutation) -> Option<String> {
    let config = Config {
        cases: 5_000,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    match runner.run(&cases(STEPS), |case| {
        check(&case, mutation).map_err(TestCaseError::fail)
    }) {
        Ok(()) => None,
        Err(e) => Some(e.to_string()),
    }
}

macro_rules! caught {
    ($($name:ident: $mutation:ident => $expect:literal),* $(,)?) => {$(
        #[test]
        fn $name() {
            let found = hunt(Mutation::$mutation)
                .unwrap_or_else(|| panic!("the model check missed {:?}", Mutation::$mutation));
            assert!(found.contains($expect), "{:?} was caught, but as: {found}", Mutation::$mutation);
        }
    )*};
}

caught! {
    a_task_reported_lost_twice_is_caught: LoseTwice => "[exactly-once]",
    a_lost_task_never_reported_is_caught: ForgetLoss => "[exactly-once]",
    a_worker_over_capacity_is_caught: ExtraCapacity => "[capacity]",
    an_output_beyond_credit_is_caught: ExtraCredit => "[credit]",
    unfair_round_robin_is_caught: RouteToZero => "[round-robin]",
    delivery_out_of_order_is_caught: ReorderDelivery => "[order]",
    submissions_accepted_after_stop_are_caught: IgnoreStop => "[stop]",
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
