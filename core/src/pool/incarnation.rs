//! One incarnation of a worker as the parent holds it once launched, and the launch that makes
//! one (built by the pool's builder, which knows the worker type).

use crate::error::Error;
use crate::launch::{Killer, Reaper};
use crate::protocol::{LinkReader, LinkWriter};
use crate::runtime::BoxFuture;

/// A launched worker that answered its handshake.
pub(crate) struct Linked {
    pub(crate) reader: LinkReader,
    pub(crate) writer: LinkWriter,
    pub(crate) pid: u32,
    pub(crate) fd: Option<std::os::fd::RawFd>,
    /// A second handle on the parent's end of the link, which submitters write small tasks to
    /// (see `write_now`).
    pub(crate) sender: Option<std::os::unix::net::UnixStream>,
    pub(crate) killer: Killer,
    pub(crate) reaper: Reaper,
}

/// Launches and handshakes worker number `k` with a result credit, given the parent's ends of
/// the other links (made by the builder, which knows the worker type). The process's killer is
/// handed to the last argument as soon as it exists, before its handshake.
pub(crate) type Launch = Box<
    dyn Fn(usize, Vec<std::os::fd::RawFd>, usize, OnSpawn) -> BoxFuture<Result<Linked, Error>>
        + Send
        + Sync,
>;

/// Receives a launching worker's killer.
pub(crate) type OnSpawn = Box<dyn FnOnce(Killer) + Send>;

/// How a pool replaces workers that die: the launch. When to launch is the state's decision.
pub(crate) struct Respawner {
    pub(crate) launch: Launch,
}
