//! What [`Members`](super::Members) is asked and what it answers.

/// Who a task is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum For<'a, K> {
    /// Any member: each in turn, in join order (a task whose member in turn holds its
    /// backlog waits for it).
    Any,
    /// This member only (targeted, or one copy of a broadcast).
    Member(&'a K),
}

/// Why a task was not placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unplaced<K> {
    /// The pool is stopping.
    Closed,
    /// No member is in the pool.
    NoMember,
    /// The member asked for is not in the pool.
    Unknown,
    /// The member the task would go to (for [`For::Any`], the member in turn) holds its
    /// backlog.
    Full(K),
}

/// What becomes of a task taken back from a member that is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakenBack<K> {
    /// It goes to this member, which now holds it (and counts it in its backlog).
    To(K),
    /// Members are there but all hold their backlogs: ask again when one has room.
    Busy,
    /// No member is there: it waits, held by nobody, for one to join
    /// ([`place_waiting`](super::Members::place_waiting)).
    Waiting,
    /// It was for the gone member only: it ends as lost.
    Lost,
    /// It was delivered as often as the pool allows: it ends as lost and is dead-lettered.
    GiveUp,
    /// The pool is stopping and no member can take it: it ends as lost.
    Stopped,
    /// It is not held by that member (it ended, or was moved meanwhile).
    NotHeld,
    /// It waited for a member past the pool's wait, and none came: it ends as lost.
    Expired,
    /// It was cancelled: it is not sent again, and leaves the table (its handle ended when it
    /// was cancelled).
    Dropped,
}

/// What [`Members::cancel`](super::Members::cancel) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled<K> {
    /// The task waited for a member: it left the table, and ends now.
    Ended,
    /// This member holds the task: tell it to drop it. The task ends now for its submitter,
    /// and keeps its place in the member's backlog until the member reports its end.
    Tell(K),
    /// The task is not under way (it ended), or was cancelled already.
    NotHeld,
}
