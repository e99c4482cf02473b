//! Faults [`Members`] can have planted, for the testkit to prove its model check catches
//! each (with the core's `fault-injection` feature; without it none can be).

use super::Members;

/// A fault planted in [`Members`], for the testkit to prove its model check catches it (only
/// with the `fault-injection` feature can one be planted).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Untargeted tasks do not advance the turn.
    StuckTurn,
    /// A task taken back goes to the next member, room or not.
    MoveIgnoresBacklog,
    /// A task taken back is moved whoever it was for.
    TargetedMoves,
    /// Ending a task does not free its place in its member's backlog.
    EndKeepsPlace,
    /// A cancelled task taken back is moved to another member like any other.
    CancelledMoves,
    /// A task's wait for a member starts when it is taken back, not when its gone member's
    /// last task was.
    WaitFromFirst,
    /// A waiting task that finds every member busy keeps its wait rather than start it anew
    /// once it finds none.
    BusyKeepsWait,
    /// Cancelling a task frees its place in its member's backlog at once, while the member
    /// may still run it.
    CancelFreesPlace,
}

impl<K> Members<K> {
    /// Plants `fault`.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn plant(&mut self, fault: Fault) {
        self.fault = Some(fault);
    }

    pub(super) fn planted(&self, _fault: Fault) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            self.fault == Some(_fault)
        }
        #[cfg(not(feature = "fault-injection"))]
        false
    }
}
