//! Tasks taken back from members that are gone: moved on, lost, given up on, dropped, or
//! waiting for a member, and for how long.

use super::{Fault, Members, TakenBack};
use crate::state::TaskId;
use std::time::Instant;

impl<K: Clone + Eq> Members<K> {
    /// Task `id` came back from gone member `from` after `deliveries` deliveries to members,
    /// at `now`: what becomes of it. A task for `from` only is lost; an untargeted one
    /// delivered as often as the pool allows is given up on; else it goes to the next member
    /// with room, or waits for one. Once `from` holds no more tasks, its tasks waiting for a
    /// member wait the pool's wait from `now`.
    pub fn take_back(
        &mut self,
        id: TaskId,
        from: &K,
        deliveries: u32,
        now: Instant,
    ) -> TakenBack<K> {
        let answer = self.answer_taken_back(id, from, deliveries);
        if answer != TakenBack::NotHeld {
            // A task lost or given up on is still in the table, for the driver to end.
            let ending = matches!(
                answer,
                TakenBack::Lost | TakenBack::GiveUp | TakenBack::Stopped
            );
            let held = self.held_by(from) - usize::from(ending);
            if held == 0 || self.planted(Fault::WaitFromFirst) {
                let until = now + self.wait;
                let waiting = self.tasks.values_mut();
                let from_gone = waiting.filter(|p| p.waiting && p.holder == *from);
                for p in from_gone.filter(|p| p.until.is_none()) {
                    p.until = Some(until);
                }
            }
        }
        answer
    }

    fn answer_taken_back(&mut self, id: TaskId, from: &K, deliveries: u32) -> TakenBack<K> {
        match self.tasks.get(&id) {
            Some(p) if !p.waiting && p.holder == *from && !self.is_live(from) => {
                if p.cancelled && !self.planted(Fault::CancelledMoves) {
                    self.tasks.remove(&id);
                    TakenBack::Dropped
                } else if !p.any && !self.planted(Fault::TargetedMoves) {
                    TakenBack::Lost
                } else if deliveries >= self.max_deliveries {
                    TakenBack::GiveUp
                } else {
                    self.move_on(id)
                }
            }
            _ => TakenBack::NotHeld,
        }
    }

    /// Waiting task `id`, at `now`: the next member with room takes it, if there is one. With
    /// members there but all busy, it waits for room, and its wait for a member starts anew
    /// when it next finds none; with no member there past its wait, it is given up on
    /// ([`TakenBack::Expired`]). A task that finds no member before its wait started (its gone
    /// member's other tasks were ended rather than taken back) starts it now.
    pub fn place_waiting(&mut self, id: TaskId, now: Instant) -> TakenBack<K> {
        match self.tasks.get(&id) {
            Some(p) if p.waiting => {}
            _ => return TakenBack::NotHeld,
        }
        let keep_wait = self.planted(Fault::BusyKeepsWait);
        let wait = self.wait;
        let answer = self.move_on(id);
        let Some(p) = self.tasks.get_mut(&id) else {
            return answer;
        };
        match answer {
            TakenBack::Waiting => {
                let until = *p.until.get_or_insert(now + wait);
                if now >= until {
                    TakenBack::Expired
                } else {
                    TakenBack::Waiting
                }
            }
            TakenBack::Busy => {
                // Room is what it waits for now; its wait for a member starts anew once it
                // finds none there.
                if !keep_wait {
                    p.until = None;
                }
                TakenBack::Busy
            }
            other => other,
        }
    }

    /// Until when waiting task `id` waits for a member (none until its gone member's last task
    /// was taken back, nor while it waits for room): the time to offer it again
    /// ([`place_waiting`](Self::place_waiting)) if no member joined by then.
    pub fn waits_until(&self, id: TaskId) -> Option<Instant> {
        self.tasks
            .get(&id)
            .filter(|p| p.waiting)
            .and_then(|p| p.until)
    }

    /// Moves task `id` (held by a gone member, or waiting) to the next member with room.
    /// Its gone member is not live, so it counts in no backlog until it moves.
    fn move_on(&mut self, id: TaskId) -> TakenBack<K> {
        let next = if self.planted(Fault::MoveIgnoresBacklog) && !self.live.is_empty() {
            Some(self.cursor % self.live.len())
        } else {
            self.roomy()
        };
        if let Some(k) = next {
            self.tasks.remove(&id);
            return TakenBack::To(self.give(id, k, true));
        }
        if !self.live.is_empty() {
            return TakenBack::Busy;
        }
        if self.closed {
            return TakenBack::Stopped;
        }
        if let Some(p) = self.tasks.get_mut(&id) {
            p.waiting = true;
        }
        TakenBack::Waiting
    }
}
