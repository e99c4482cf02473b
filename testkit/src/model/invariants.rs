//! The invariants checked after every step of a model-check run.

use super::{Harness, RefPhase, Sent, STOP_BACKLOG};
use looppool_core::state::Transmit;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

impl Harness {
    pub(super) fn check_invariants(&self) -> Result<(), String> {
        let state = self.sut.state();
        let n = self.model.size();
        // 1. Exactly once, and held until then.
        for (&id, &worker) in &self.model.accepted {
            let times = self.reported.get(&id).copied().unwrap_or(0);
            if self.model.ended.contains_key(&id) {
                ensure!(times == 1, "[exactly-once] task {id} ended {times} times");
                ensure!(
                    !state.holds(worker, id),
                    "[exactly-once] worker {worker} still holds ended task {id}"
                );
            } else {
                ensure!(
                    times == 0,
                    "[exactly-once] task {id} reported ended but should still run"
                );
                if self.model.deferred.iter().any(|&(d, _)| d == id) {
                    ensure!(
                        (0..self.model.size()).all(|k| !state.holds(k, id)),
                        "[retry] task {id} waits for a retry but is held"
                    );
                } else {
                    ensure!(
                        state.holds(worker, id),
                        "[exactly-once] task {id} is neither held nor ended"
                    );
                }
            }
        }
        for k in 0..n {
            // 2. Capacity and credit.
            ensure!(
                state.held(k) <= self.model.capacity,
                "[capacity] worker {k} holds {} tasks",
                state.held(k)
            );
            let extra = match self.model.phase {
                RefPhase::Running => 0,
                _ => STOP_BACKLOG,
            };
            ensure!(
                state.unacked(k) <= self.model.credit + extra,
                "[credit] worker {k} has {} unacked",
                state.unacked(k)
            );
            ensure!(
                state.unacked(k) == self.model.workers[k].unacked,
                "[credit] worker {k} has {} unacked, expected {}",
                state.unacked(k),
                self.model.workers[k].unacked
            );
            // The number's credit is neither granted twice nor lost across its incarnations:
            // what its outputs hold, what is owed and what the worker holds add up to it.
            let w = &self.model.workers[k];
            if w.alive && !w.said_bye && w.honest {
                ensure!(
                    w.unacked + w.owed + w.held_credit == self.model.credit + w.extra_credit,
                    "[credit] worker {k}: {} unacked + {} owed + {} held is not its credit {} + \
                     {} granted by the stop",
                    w.unacked,
                    w.owed,
                    w.held_credit,
                    self.model.credit,
                    w.extra_credit
                );
            }
            // 4. Each worker received exactly what was queued for it, in order.
            let w = &self.model.workers[k];
            if w.alive {
                let received: Vec<Sent> = self.sut.received[k]
                    .iter()
                    .map(|t| match t {
                        Transmit::Task { id, .. } => Sent::Task(*id),
                        Transmit::Cancel { id } => Sent::Cancel(*id),
                        _ => Sent::Stop,
                    })
                    .collect();
                ensure!(
                    received == w.sent[..w.delivered],
                    "[order] worker {k} received {received:?}, queued {:?}",
                    &w.sent[..w.delivered]
                );
            }
        }
        // 3. Round-robin balance while the live set is unchanged.
        let live: Vec<usize> = (0..n)
            .filter(|&k| self.model.workers[k].accepts())
            .collect();
        let counts: Vec<usize> = live
            .iter()
            .map(|k| self.epoch.get(k).copied().unwrap_or(0))
            .collect();
        if let (Some(max), Some(min), false) = (
            counts.iter().max(),
            counts.iter().min(),
            self.model.least_loaded,
        ) {
            ensure!(
                max - min <= 1,
                "[round-robin] round-robin shares {:?} over live workers {live:?}",
                counts
            );
        }
        // 5. Stop.
        let stopped = self.model.stopped();
        ensure!(
            state.is_stopped() == stopped,
            "[stop] stopped: {}, expected {stopped}",
            state.is_stopped()
        );
        if stopped {
            ensure!(
                self.model.ended.len() == self.model.accepted.len(),
                "[stop] stopped with {} of {} tasks ended",
                self.model.ended.len(),
                self.model.accepted.len()
            );
        }
        Ok(())
    }
}
