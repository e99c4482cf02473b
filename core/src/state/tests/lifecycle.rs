//! Retries, silent and oversized workers, the restart policy and recycling.

use super::*;

#[test]
fn a_lost_task_is_retried_under_its_own_id_until_its_retries_are_spent() {
    let t0 = Instant::now();
    let mut s = ready(3, 2, 1);
    s.set_retries(1);
    let (_, id) = s.submit(Route::Any, 7).unwrap();
    let _ = s.handle_exit(0, t0, Departure::Died);
    assert_eq!(events(&mut s), [Event::Retried { id, from: 0, to: 1 }]);
    assert!(s.holds(1, id));
    assert_eq!(task_payloads(&mut s, 1), [7]);
    let _ = s.handle_exit(1, t0, Departure::Died);
    assert_eq!(
        events(&mut s),
        [Event::Lost {
            worker: 1,
            id,
            why: Loss::Died
        }],
        "its one retry was spent"
    );
}

#[test]
fn a_retry_waits_for_room_and_a_stop_loses_it() {
    let t0 = Instant::now();
    let mut s = ready(2, 1, 1);
    s.set_retries(1);
    let (_, a) = s.submit(Route::Any, 1).unwrap();
    let (_, b) = s.submit(Route::Any, 2).unwrap();
    let _ = s.handle_exit(0, t0, Departure::Died);
    assert_eq!(events(&mut s), [], "worker 1 is full");
    assert_eq!(s.retries_waiting(), 1);
    s.handle_done(1, b).unwrap();
    assert_eq!(
        events(&mut s),
        [Event::Retried {
            id: a,
            from: 0,
            to: 1
        }]
    );
    // Its one retry is spent now.
    let _ = s.handle_exit(1, t0, Departure::Died);
    assert_eq!(
        events(&mut s),
        [Event::Lost {
            worker: 1,
            id: a,
            why: Loss::Died
        }]
    );
    // A retry still waiting for room when the pool stops is lost.
    let mut s = ready(2, 1, 1);
    s.set_retries(1);
    let (_, a) = s.submit(Route::Any, 1).unwrap();
    s.submit(Route::Any, 2).unwrap();
    let _ = s.handle_exit(0, t0, Departure::Died);
    s.begin_stop(t0, Duration::from_secs(1));
    assert_eq!(
        events(&mut s),
        [Event::Lost {
            worker: 0,
            id: a,
            why: Loss::Stopped
        }]
    );
}

#[test]
fn a_targeted_retry_waits_for_its_own_numbers_replacement() {
    let t0 = Instant::now();
    let mut s = ready(2, 2, 1);
    s.set_retries(1);
    s.set_restart_policy(Some(policy()));
    let (_, id) = s.submit(Route::Worker(0), 5).unwrap();
    let _ = s.handle_exit(0, t0, Departure::Died);
    assert_eq!(
        events(&mut s),
        [Event::Relaunch {
            worker: 0,
            after: Duration::ZERO
        }]
    );
    assert!(!s.holds(1, id), "not sent to another worker");
    s.handle_replaced(0, 1);
    assert_eq!(events(&mut s), [Event::Retried { id, from: 0, to: 0 }]);
}

#[test]
fn a_silent_worker_is_killed_only_while_it_holds_tasks_and_only_once() {
    let mut s = ready(2, 2, 1);
    s.set_stall_limit(Some(Duration::from_secs(1)));
    s.handle_silence(0, Duration::from_secs(5));
    assert_eq!(events(&mut s), [], "an idle worker may be silent");
    s.submit(Route::Worker(0), 1).unwrap();
    s.handle_silence(0, Duration::from_millis(900));
    assert_eq!(events(&mut s), [], "within the limit");
    let silent = Duration::from_secs(2);
    s.handle_silence(0, silent);
    s.handle_silence(0, silent);
    assert_eq!(
        events(&mut s),
        [Event::Kill {
            worker: 0,
            cause: KillCause::Stalled { silent }
        }]
    );
}

#[test]
fn a_worker_over_the_memory_limit_retires_and_kill_all_kills_every_live_one() {
    let mut s = ready(2, 2, 1);
    s.set_memory_limit(Some(1000));
    assert!(!s.handle_memory(0, 1000));
    assert!(s.handle_memory(0, 1001));
    assert_eq!(
        events(&mut s),
        [Event::Retiring {
            worker: 0,
            why: Retirement::Memory {
                bytes: 1001,
                limit: 1000
            }
        }]
    );
    s.kill_all(Instant::now());
    let kills: Vec<_> = events(&mut s);
    assert_eq!(
        kills,
        [0, 1].map(|worker| Event::Kill {
            worker,
            cause: KillCause::PoolKilled
        })
    );
    assert_eq!(s.killed(), [0, 1]);
}

#[test]
fn quick_failures_back_off_then_give_up_and_the_number_is_tried_again_later() {
    let t0 = Instant::now();
    let mut s = ready(1, 1, 1);
    s.set_restart_policy(Some(policy()));
    let ms = |m| Restart::After(Duration::from_millis(m));
    let mut decisions = Vec::new();
    for _ in 0..4 {
        decisions.push(s.handle_exit(0, t0, Departure::Died));
        if let Restart::After(_) = decisions.last().unwrap() {
            assert_eq!(s.status(0), WorkerStatus::Replacing);
            s.handle_replaced(0, 1);
            s.handle_ready(0, t0).unwrap();
        }
    }
    let retry_at = t0 + Duration::from_secs(30);
    assert_eq!(
        decisions,
        [
            ms(0),
            ms(10),
            ms(20),
            Restart::GiveUp {
                failures: 3,
                retry_at
            }
        ]
    );
    assert_eq!(s.status(0), WorkerStatus::Exited);
    assert_eq!(s.given_up_until(0), Some(retry_at));
    assert!(!s.revive(0, Some(retry_at - Duration::from_millis(1))));
    assert!(s.revive(0, Some(retry_at)));
    assert_eq!(s.status(0), WorkerStatus::Replacing);
    assert_eq!(s.given_up_until(0), None);
}

#[test]
fn a_worker_that_served_is_replaced_at_once_and_retirements_count_for_nothing() {
    let t0 = Instant::now();
    let mut s = ready(2, 1, 1);
    s.set_restart_policy(Some(policy()));
    for round in 0..10u64 {
        // Worker 0 serves a second each time before it is killed; worker 1 ends a task.
        let at = t0 + Duration::from_secs(round + 1);
        assert_eq!(
            s.handle_exit(0, at, Departure::Died),
            Restart::After(Duration::ZERO)
        );
        s.handle_replaced(0, 1);
        s.handle_ready(0, at).unwrap();
        let (_, id) = s.submit(Route::Worker(1), 0).unwrap();
        s.handle_done(1, id).unwrap();
        assert_eq!(
            s.handle_exit(1, t0, Departure::Died),
            Restart::After(Duration::ZERO)
        );
        s.handle_replaced(1, 1);
        s.handle_ready(1, t0).unwrap();
    }
    // Retiring (recycling) never counts, however often.
    for _ in 0..10 {
        assert_eq!(
            s.handle_exit(1, t0, Departure::Retired),
            Restart::After(Duration::ZERO)
        );
        s.handle_replaced(1, 1);
        s.handle_ready(1, t0).unwrap();
    }
    // No policy, or a stop: nothing is relaunched.
    s.begin_stop(t0, Duration::from_secs(1));
    assert_eq!(s.handle_exit(1, t0, Departure::Died), Restart::Never);
}

#[test]
fn a_worker_is_retired_once_it_ended_its_recycling_limit() {
    let mut s = ready(1, 4, 1);
    s.set_recycle_after(Some(2));
    let ids: Vec<TaskId> = (0..3).map(|i| s.submit(Route::Any, i).unwrap().1).collect();
    let _ = drain(&mut s, 0);
    s.handle_done(0, ids[0]).unwrap();
    assert!(!s.has_transmit(0));
    s.handle_done(0, ids[1]).unwrap();
    // The poison pill follows; it takes no new task and finishes the one it holds.
    assert_eq!(drain(&mut s, 0), [Transmit::Stop]);
    assert!(matches!(
        s.submit(Route::Any, 9),
        Err(Refusal::Replacing { .. })
    ));
    assert!(s.holds(0, ids[2]));
}

#[test]
fn a_stop_waits_for_replacements_under_way() {
    let t0 = Instant::now();
    let mut s = ready(1, 1, 1);
    s.set_restart_policy(Some(policy()));
    assert_eq!(
        s.handle_exit(0, t0, Departure::Died),
        Restart::After(Duration::ZERO)
    );
    assert_eq!(s.launches_under_way(), 1);
    s.begin_stop(t0, Duration::from_secs(1));
    assert!(!s.is_stopped(), "a replacement is still launching");
    // Its launch fails once the stop began: it is not tried again, and the stop is done.
    assert_eq!(s.handle_launch_failed(0, t0), Restart::Never);
    assert!(s.is_stopped());
}

#[test]
fn sticky_replays_are_neither_service_nor_work() {
    let t0 = Instant::now();
    let mut s = ready(1, 1, 1);
    s.set_restart_policy(Some(policy()));
    s.set_recycle_after(Some(1));
    s.broadcast_sticky("table", 1).unwrap();
    let sticky = match drain(&mut s, 0).as_slice() {
        [Transmit::Task { id, .. }] => *id,
        other => panic!("{other:?}"),
    };
    s.handle_done(0, sticky).unwrap();
    // That was real work for the first incarnation: it retires after one task.
    assert_eq!(drain(&mut s, 0), [Transmit::Stop]);
    s.handle_bye(0).unwrap();
    assert_eq!(
        s.handle_exit(0, t0, Departure::Retired),
        Restart::After(Duration::ZERO)
    );
    let (_, replayed) = s.handle_replaced(0, 1);
    s.handle_ready(0, t0).unwrap();
    s.handle_done(0, replayed[0]).unwrap();
    // The replay neither retired the replacement nor made it healthy: a crash now is quick.
    assert_eq!(s.status(0), WorkerStatus::Ready);
    let decisions = [
        s.handle_exit(0, t0, Departure::Died),
        s.handle_launch_failed(0, t0),
    ];
    assert_eq!(decisions[0], Restart::After(Duration::ZERO));
    assert_eq!(decisions[1], Restart::After(Duration::from_millis(10)));
}
