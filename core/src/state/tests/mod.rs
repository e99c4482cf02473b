use super::*;
use std::time::{Duration, Instant};

fn ready(workers: usize, capacity: usize, credit: usize) -> PoolState<u32> {
    let mut s = PoolState::new(workers, capacity, credit);
    for k in 0..workers {
        s.handle_ready(k, Instant::now()).unwrap();
    }
    s
}

fn drain(s: &mut PoolState<u32>, worker: usize) -> Vec<Transmit<u32>> {
    std::iter::from_fn(|| s.poll_transmit(worker)).collect()
}

/// The payloads of the tasks queued for `worker`, in order.
fn task_payloads(s: &mut PoolState<u32>, worker: usize) -> Vec<u32> {
    drain(s, worker)
        .into_iter()
        .filter_map(|t| match t {
            Transmit::Task { payload, .. } => Some(payload),
            _ => None,
        })
        .collect()
}

fn events(s: &mut PoolState<u32>) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn policy() -> RestartPolicy {
    RestartPolicy {
        max_restarts: 3,
        window: Duration::from_secs(60),
        initial: Duration::from_millis(10),
        max_delay: Duration::from_millis(25),
        healthy_after: Duration::from_secs(1),
        retry_after: Duration::from_secs(30),
    }
}

#[test]
fn round_robin_rotates_over_live_workers_and_skips_exited_ones() {
    let mut s = ready(3, 10, 1);
    s.set_routing(Routing::RoundRobin);
    let picks: Vec<usize> = (0..6).map(|i| s.submit(Route::Any, i).unwrap().0).collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    let _ = s.handle_exit(1, Instant::now(), Departure::Died);
    let picks: Vec<usize> = (0..4).map(|i| s.submit(Route::Any, i).unwrap().0).collect();
    assert_eq!(picks, [0, 2, 0, 2]);
}

#[test]
fn a_full_worker_refuses_and_the_cursor_stays() {
    let mut s = ready(2, 1, 1);
    s.set_routing(Routing::RoundRobin);
    assert_eq!(s.submit(Route::Any, 0).unwrap().0, 0);
    assert_eq!(s.submit(Route::Any, 1).unwrap().0, 1);
    assert_eq!(s.submit(Route::Any, 2), Err(Refusal::Full { worker: 0 }));
    assert_eq!(
        s.submit(Route::Worker(1), 3),
        Err(Refusal::Full { worker: 1 })
    );
    let first = match drain(&mut s, 0).as_slice() {
        [Transmit::Task { id, .. }] => *id,
        other => panic!("{other:?}"),
    };
    s.handle_done(0, first).unwrap();
    assert_eq!(
        s.submit(Route::Any, 4).unwrap().0,
        0,
        "the cursor did not move past worker 0"
    );
}

#[test]
fn least_loaded_skips_a_busy_worker_and_rotates_among_equals() {
    let mut s = ready(3, 2, 1);
    // Worker 0 takes a long task and keeps it; the others end theirs at once.
    assert_eq!(s.submit(Route::Any, 0).unwrap().0, 0);
    let mut picks = Vec::new();
    for i in 1..=6 {
        let (k, id) = s.submit(Route::Any, i).unwrap();
        picks.push(k);
        if k != 0 {
            s.handle_done(k, id).unwrap();
        }
    }
    assert_eq!(picks, [1, 2, 1, 2, 1, 2], "never behind the busy worker");
    // Equal loads spread in rotation; a full pool refuses only when every worker is full.
    let mut s = ready(2, 1, 1);
    s.set_routing(Routing::LeastLoaded);
    assert_eq!(s.submit(Route::Any, 0).unwrap().0, 0);
    assert_eq!(s.submit(Route::Any, 1).unwrap().0, 1);
    assert!(matches!(s.submit(Route::Any, 2), Err(Refusal::Full { .. })));
}

#[test]
fn a_key_always_reaches_the_same_worker_number() {
    let t0 = Instant::now();
    let mut s = ready(3, 4, 1);
    s.set_restart_policy(Some(policy()));
    assert_eq!(s.submit(Route::Key(7), 0).unwrap().0, 1);
    assert_eq!(s.submit(Route::Key(7), 0).unwrap().0, 1);
    let _ = s.handle_exit(1, t0, Departure::Died);
    assert_eq!(
        s.submit(Route::Key(7), 0),
        Err(Refusal::Replacing { worker: 1 }),
        "it waits for its own number's replacement"
    );
    s.handle_replaced(1, 1);
    assert_eq!(s.submit(Route::Key(7), 0).unwrap().0, 1);
}

#[test]
fn targeted_submissions_check_the_worker_number_and_liveness() {
    let mut s = ready(2, 4, 1);
    assert_eq!(
        s.submit(Route::Worker(2), 0),
        Err(Refusal::NoSuchWorker { worker: 2, size: 2 })
    );
    let _ = s.handle_exit(1, Instant::now(), Departure::Died);
    assert_eq!(
        s.submit(Route::Worker(1), 0),
        Err(Refusal::WorkerExited { worker: 1 })
    );
    let _ = s.handle_exit(0, Instant::now(), Departure::Died);
    assert_eq!(s.submit(Route::Any, 0), Err(Refusal::NoLiveWorkers));
}

#[test]
fn broadcast_is_all_or_nothing_and_queued_behind_earlier_tasks() {
    let mut s = ready(3, 2, 1);
    s.submit(Route::Worker(1), 10).unwrap();
    s.submit(Route::Worker(1), 11).unwrap();
    assert_eq!(s.broadcast(99), Err(Refusal::Full { worker: 1 }));
    assert_eq!(
        s.held(0) + s.held(2),
        0,
        "a refused broadcast queued nothing"
    );
    let t = drain(&mut s, 1);
    for tr in &t {
        if let Transmit::Task { id, .. } = tr {
            s.handle_done(1, *id).unwrap();
        }
    }
    s.submit(Route::Worker(1), 12).unwrap();
    let copies = s.broadcast(99).unwrap();
    assert_eq!(copies.iter().map(|c| c.0).collect::<Vec<_>>(), [0, 1, 2]);
    let payloads = task_payloads(&mut s, 1);
    assert_eq!(payloads, [12, 99]);
}

#[test]
fn outputs_beyond_credit_are_a_violation_and_acks_return_credit() {
    let mut s = ready(1, 1, 2);
    s.handle_output(0, None).unwrap();
    s.handle_output(0, None).unwrap();
    assert_eq!(
        s.handle_output(0, None),
        Err(Violation::CreditExceeded {
            worker: 0,
            credit: 2
        })
    );
    s.handle_ack(0);
    assert_eq!(s.unacked(0), 1);
    assert_eq!(drain(&mut s, 0), [Transmit::Ack(1)]);
    s.handle_output(0, None).unwrap();
}

#[test]
fn a_worker_is_quiet_only_with_one_task_at_most_and_every_output_acknowledged() {
    let mut s = ready(1, 4, 8);
    assert!(s.quiet(0));
    let (_, first) = s.submit(Route::Any, 1).unwrap();
    assert!(s.quiet(0), "the one task it was just given");
    s.submit(Route::Any, 2).unwrap();
    assert!(!s.quiet(0), "a second task: a stream");
    drain(&mut s, 0);
    s.handle_output(0, Some(first)).unwrap();
    s.handle_done(0, first).unwrap();
    assert!(!s.quiet(0), "an output still being read");
    s.handle_ack(0);
    assert!(s.quiet(0), "one task, every output acknowledged");
}

#[test]
fn result_credit_belongs_to_the_worker_number_across_incarnations() {
    let mut s = ready(1, 1, 3);
    s.handle_output(0, None).unwrap();
    s.handle_output(0, None).unwrap();
    let _ = s.handle_exit(0, Instant::now(), Departure::Died);
    // Two outputs of the dead incarnation are unread: its replacement starts with one credit.
    assert_eq!(s.replacement_credit(0), 1);
    // One is read while the replacement launches: it is owed that credit once registered.
    s.handle_ack(0);
    assert!(!s.has_transmit(0), "nobody to send a credit to");
    assert_eq!(s.handle_replaced(0, 1), (1, vec![]));
    assert_eq!(drain(&mut s, 0), [Transmit::Ack(1)]);
    s.handle_ready(0, Instant::now()).unwrap();
    s.handle_output(0, None).unwrap();
    s.handle_output(0, None).unwrap();
    assert_eq!(
        s.handle_output(0, None),
        Err(Violation::CreditExceeded {
            worker: 0,
            credit: 3
        }),
        "one output of the first incarnation is still unread"
    );
    // Reading the old one returns its credit to the new incarnation at once: it has none left.
    s.handle_ack(0);
    assert_eq!(drain(&mut s, 0), [Transmit::Ack(1)]);
}

#[test]
fn credits_go_back_in_batches_or_along_with_a_frame() {
    let mut s = ready(1, 4, 8);
    for _ in 0..4 {
        s.handle_output(0, None).unwrap();
    }
    // Fewer than half the credit back, and the worker still has half: not worth waking it for.
    for _ in 0..3 {
        s.handle_ack(0);
    }
    assert!(!s.has_transmit(0));
    assert_eq!(drain(&mut s, 0), []);
    // A task goes to the worker anyway: the three credits share its write.
    let (_, id) = s.submit(Route::Worker(0), 1).unwrap();
    assert!(s.has_transmit(0));
    assert_eq!(
        drain(&mut s, 0),
        [Transmit::Task { id, payload: 1 }, Transmit::Ack(3)]
    );
    // Half the credit back goes on its own.
    for _ in 0..3 {
        s.handle_output(0, None).unwrap();
    }
    for _ in 0..3 {
        s.handle_ack(0);
    }
    assert!(!s.has_transmit(0));
    s.handle_ack(0);
    assert!(s.has_transmit(0));
    assert_eq!(drain(&mut s, 0), [Transmit::Ack(4)]);
}

#[test]
fn a_worker_short_of_credit_gets_back_each_one_read() {
    // A consumer that holds deliveries, as a sliding window does: the worker used up its credit,
    // and each output read lets it emit one more at once.
    let mut s = ready(1, 4, 8);
    for _ in 0..8 {
        s.handle_output(0, None).unwrap();
    }
    s.handle_ack(0);
    assert_eq!(drain(&mut s, 0), [Transmit::Ack(1)]);
    s.handle_output(0, None).unwrap();
    s.handle_ack(0);
    assert_eq!(drain(&mut s, 0), [Transmit::Ack(1)]);
}

#[test]
fn a_stops_backlog_goes_at_once() {
    let mut s = ready(1, 1, 8);
    s.set_stop_backlog(2);
    s.begin_stop(Instant::now(), std::time::Duration::from_secs(1));
    let sent = drain(&mut s, 0);
    assert_eq!(sent, [Transmit::Stop, Transmit::Ack(2)]);
}

#[test]
fn an_output_for_a_task_the_worker_does_not_hold_is_a_violation() {
    let mut s = ready(2, 2, 4);
    let (w, id) = s.submit(Route::Worker(1), 7).unwrap();
    assert_eq!(w, 1);
    assert_eq!(
        s.handle_output(0, Some(id)),
        Err(Violation::ForeignOutput {
            worker: 0,
            task: id
        })
    );
    assert_eq!(s.unacked(0), 0, "a refused output counts against nothing");
    s.handle_output(1, Some(id)).unwrap();
    s.handle_output(0, None).unwrap();
    s.handle_done(1, id).unwrap();
    assert_eq!(
        s.handle_output(1, Some(id)),
        Err(Violation::ForeignOutput {
            worker: 1,
            task: id
        }),
        "an output after its task ended"
    );
}

#[test]
fn sticky_broadcasts_are_replayed_to_a_replacement_before_anything_else() {
    let mut s = ready(2, 4, 1);
    s.broadcast_sticky("table", 1).unwrap();
    s.broadcast_sticky("config", 2).unwrap();
    s.broadcast_sticky("table", 3).unwrap();
    s.broadcast(4).unwrap();
    s.set_restart_policy(Some(policy()));
    let _ = s.handle_exit(1, Instant::now(), Departure::Died);
    let (generation, replayed) = s.handle_replaced(1, 1);
    assert_eq!((generation, replayed.len()), (1, 2));
    s.handle_ready(1, Instant::now()).unwrap();
    s.submit(Route::Worker(1), 9).unwrap();
    let payloads = task_payloads(&mut s, 1);
    // The latest value of each key, in the order the keys were last set; then new work.
    assert_eq!(payloads, [2, 3, 9]);
}

#[test]
fn a_retiring_worker_takes_no_new_tasks_and_drains() {
    let mut s = ready(2, 4, 1);
    let (_, held) = s.submit(Route::Worker(0), 1).unwrap();
    assert!(s.handle_retire(0));
    assert!(!s.handle_retire(0), "retiring twice");
    assert_eq!(
        s.submit(Route::Any, 2).unwrap().0,
        1,
        "round-robin skips it"
    );
    assert_eq!(s.submit(Route::Any, 3).unwrap().0, 1);
    assert_eq!(
        s.submit(Route::Worker(0), 4),
        Err(Refusal::Replacing { worker: 0 })
    );
    assert_eq!(
        drain(&mut s, 0),
        [
            Transmit::Task {
                id: held,
                payload: 1
            },
            Transmit::Stop
        ]
    );
    s.handle_done(0, held).unwrap();
    s.handle_bye(0).unwrap();
    let _ = events(&mut s);
    assert_eq!(
        s.handle_exit(0, Instant::now(), Departure::Retired),
        Restart::Never
    );
    assert_eq!(events(&mut s), [], "nothing was lost");
}

#[test]
fn submissions_wait_for_a_worker_being_replaced_and_fail_once_it_is_given_up() {
    let t0 = Instant::now();
    let mut s = ready(1, 4, 1);
    s.set_restart_policy(Some(policy()));
    let _ = s.handle_exit(0, t0, Departure::Died);
    assert_eq!(
        s.submit(Route::Worker(0), 1),
        Err(Refusal::Replacing { worker: 0 })
    );
    assert_eq!(
        s.submit(Route::Any, 1),
        Err(Refusal::Replacing { worker: 0 })
    );
    assert_eq!(s.broadcast(1), Err(Refusal::Replacing { worker: 0 }));
    while let Restart::After(_) = s.handle_launch_failed(0, t0) {}
    assert_eq!(
        s.submit(Route::Worker(0), 1),
        Err(Refusal::WorkerExited { worker: 0 })
    );
    assert_eq!(s.submit(Route::Any, 1), Err(Refusal::NoLiveWorkers));
}

#[test]
fn a_stop_cancels_replacements_on_their_way() {
    let mut s = ready(2, 4, 1);
    s.set_restart_policy(Some(policy()));
    let _ = s.handle_exit(0, Instant::now(), Departure::Died);
    assert_eq!(s.status(0), WorkerStatus::Replacing);
    s.begin_stop(Instant::now(), Duration::from_secs(1));
    assert_eq!(s.status(0), WorkerStatus::Exited);
    let _ = s.handle_exit(1, Instant::now(), Departure::Died);
    s.handle_launch_abandoned();
    assert!(s.is_stopped());
}

#[test]
fn replays_respect_capacity_and_come_before_any_other_task() {
    let mut s = ready(1, 1, 1);
    s.broadcast_sticky("a", 1).unwrap();
    let first = match drain(&mut s, 0).as_slice() {
        [Transmit::Task { id, .. }] => *id,
        other => panic!("{other:?}"),
    };
    s.handle_done(0, first).unwrap();
    s.broadcast_sticky("b", 2).unwrap();
    let second = match drain(&mut s, 0).as_slice() {
        [Transmit::Task { id, .. }] => *id,
        other => panic!("{other:?}"),
    };
    s.handle_done(0, second).unwrap();
    let _ = s.handle_exit(0, Instant::now(), Departure::Died);
    let (_, now) = s.handle_replaced(0, 1);
    assert_eq!(now.len(), 1, "one replay at a time with a capacity of 1");
    assert_eq!(s.held(0), 1);
    assert_eq!(
        s.submit(Route::Any, 9),
        Err(Refusal::Replacing { worker: 0 })
    );
    assert_eq!(s.broadcast(9), Err(Refusal::Replacing { worker: 0 }));
    s.handle_ready(0, Instant::now()).unwrap();
    s.handle_done(0, now[0]).unwrap();
    assert_eq!(s.held(0), 1, "the second replay went out");
    let rest = task_payloads(&mut s, 0);
    assert_eq!(rest, [1, 2]);
}

mod lifecycle;
