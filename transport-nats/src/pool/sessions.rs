//! What the parent remembers of each member's runs: how far it received the current run's
//! messages, and which runs left (a join of theirs sent again is not welcomed).

use std::collections::{HashSet, VecDeque};

/// The run of a member that joined under a name (the last one), kept after it leaves: its
/// outputs and ends may still be on their way.
pub(super) struct Session {
    pub(super) nonce: u64,
    /// The number of the last message of the run taken: every one up to it was taken, once.
    pub(super) received: u64,
    /// The run's outputs taken, in all.
    pub(super) outputs: u64,
}

/// What to do with a member's message, by its number.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// The next one: take it.
    Next,
    /// One taken before, sent again: drop it.
    Again,
    /// One past a message that did not arrive: drop it; the member sends both again.
    Early,
}

impl Session {
    pub(super) fn new(nonce: u64) -> Self {
        Self {
            nonce,
            received: 0,
            outputs: 0,
        }
    }

    /// Where message `seq` of this run stands; records it if it is the next one.
    pub(super) fn arrive(&mut self, seq: u64) -> Arrival {
        if seq <= self.received {
            Arrival::Again
        } else if seq == self.received + 1 {
            self.received = seq;
            Arrival::Next
        } else {
            Arrival::Early
        }
    }
}

/// Runs of members that left: a join they sent again is not welcomed again.
#[derive(Default)]
pub(super) struct Departed {
    order: VecDeque<(String, u64)>,
    set: HashSet<(String, u64)>,
}

impl Departed {
    const KEPT: usize = 4096;

    pub(super) fn insert(&mut self, member: &str, nonce: u64) {
        let key = (member.to_string(), nonce);
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
        }
        if self.order.len() > Self::KEPT {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    pub(super) fn contains(&self, member: &str, nonce: u64) -> bool {
        self.set.contains(&(member.to_string(), nonce))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_is_taken_once_and_in_order() {
        let mut s = Session::new(7);
        assert_eq!(s.arrive(1), Arrival::Next);
        // The second was lost: the third waits for both to come again.
        assert_eq!(s.arrive(3), Arrival::Early);
        assert_eq!(s.arrive(1), Arrival::Again);
        assert_eq!(s.arrive(2), Arrival::Next);
        assert_eq!(s.arrive(3), Arrival::Next);
        assert_eq!(s.arrive(0), Arrival::Again);
        assert_eq!(s.received, 3);
    }

    #[test]
    fn departed_runs_are_remembered_up_to_a_bound() {
        let mut d = Departed::default();
        d.insert("m", 1);
        assert!(d.contains("m", 1) && !d.contains("m", 2));
        for n in 2..(Departed::KEPT as u64 + 10) {
            d.insert("m", n);
        }
        assert!(!d.contains("m", 1), "the oldest is forgotten");
        assert!(d.order.len() <= Departed::KEPT);
    }
}
