//! What the parent remembers of each member's runs: which outputs of the current run it
//! accepted, and which runs left (a join of theirs sent again is not welcomed).

use std::collections::{BTreeSet, HashSet, VecDeque};

/// The run of a member that joined under a name (the last one), kept after it leaves: its
/// outputs and ends may still be on their way.
pub(super) struct Session {
    pub(super) nonce: u64,
    pub(super) outputs: Window,
}

/// Which output numbers of a member were accepted: each at most once.
#[derive(Default)]
pub(super) struct Window {
    /// Every number up to this one was seen.
    floor: u64,
    /// Numbers above the floor seen.
    above: BTreeSet<u64>,
}

impl Window {
    /// Most numbers kept above the floor: a gap this far behind (an output its member never
    /// stored) is given up.
    const SPAN: usize = 1 << 16;

    /// Whether `seq` is seen for the first time; records it.
    pub(super) fn admit(&mut self, seq: u64) -> bool {
        if seq <= self.floor || !self.above.insert(seq) {
            return false;
        }
        while self.above.first() == Some(&(self.floor + 1)) {
            self.floor += 1;
            self.above.pop_first();
        }
        while self.above.len() > Self::SPAN {
            if let Some(first) = self.above.pop_first() {
                self.floor = first;
            }
        }
        true
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
    fn each_output_number_is_admitted_once_in_any_order() {
        let mut w = Window::default();
        for seq in [1, 3, 2, 5] {
            assert!(w.admit(seq), "{seq} refused");
        }
        for seq in [0, 1, 2, 3, 5] {
            assert!(!w.admit(seq), "{seq} admitted twice");
        }
        assert!(w.admit(4));
        assert_eq!((w.floor, w.above.len()), (5, 0));
    }

    #[test]
    fn a_gap_never_filled_is_given_up_past_the_span() {
        let mut w = Window::default();
        for seq in 2..=(Window::SPAN as u64 + 2) {
            assert!(w.admit(seq));
        }
        assert!(w.above.len() <= Window::SPAN);
        assert!(!w.admit(1), "the gap is given up");
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
