//! The priority of worker processes: by default below the parent's.

/// How far below the parent's priority workers run by default.
pub(super) const DEFAULT_NICE_BELOW_PARENT: i32 = 10;

/// The priority of worker processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerNice {
    /// The parent's nice value plus this, at most 19.
    BelowParent(i32),
    /// This nice value.
    Exactly(i32),
    /// The parent's.
    AsParent,
}

impl WorkerNice {
    /// The nice value to set in a worker, if any, given the parent's.
    pub(crate) fn resolve(self, parent: i32) -> Option<i32> {
        let nice = match self {
            WorkerNice::BelowParent(n) => (parent + n).min(19),
            WorkerNice::Exactly(n) => n,
            WorkerNice::AsParent => return None,
        };
        (nice != parent).then_some(nice)
    }
}
