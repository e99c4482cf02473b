//! Scale-out for **looppool**: the same [`Worker`](looppool_core::Worker) on any number of hosts,
//! reached through a NATS server with JetStream.
//!
//! The parent builds a [`Pool`]; on each host a [`Member`] joins it by naming the server and
//! the pool, and runs the worker in a local pool of worker processes. The pool keeps the local
//! pool's policies and guarantees:
//!
//! - **Routing**: round-robin over the live members, targeted to one member, broadcast to each,
//!   and sticky broadcasts that also reach every member joining later, before its first task.
//! - **Task credit**: each member has its own durable JetStream consumer on the pool's
//!   work-queue stream, with `max_ack_pending` equal to its capacity; the parent sends a member
//!   at most its backlog and makes submitters wait for room.
//! - **Result credit**: a member sends at most `result_credit` outputs that the program has not
//!   taken; the parent acknowledges an output when the program drops its [`Delivery`], and
//!   tells the member how many it acknowledged so far. Past its credit a member holds its
//!   outputs back, in order, and the end of each task with an output held; the ends of other
//!   tasks go on.
//! - **Outputs and ends**: a member sends its outputs and task ends in order on core NATS,
//!   without a store, several to a message when several are ready: it keeps each until the
//!   parent confirms it and sends again, in order, what is still not confirmed after a
//!   heartbeat (a lost connection, a broker restart); the parent takes each once. Only tasks
//!   are stored: a task must outlive the member it was sent to, while an output or end is
//!   wanted only by the parent, and lost only with the member that holds it (its task is then
//!   taken back, as any task of a member that died) or with the parent (whose handles are then
//!   gone).
//! - **Membership**: members join with a request the parent answers, beat a heartbeat, and
//!   leave; one silent past the member timeout is counted gone. [`Pool::events`] tells both.
//!   A member that lost its parent for a member timeout (a partition, a stalled or dead
//!   parent) stops its workers and joins again once a parent answers; a member restarted
//!   under its name takes its place once the old run was silent for four heartbeats (or half
//!   the member timeout, if longer).
//! - **Who may act on the pool**: the parent and its members share a [`Secret`]; every message
//!   is sealed with it for its subject and carries the sender's run, so a client of the server
//!   without the secret can neither forge nor replay one ([`Pool::refused`] counts the
//!   refusals). A task's end and outputs are accepted only from the member that holds the task.
//!   Only the server can keep a member (which holds the secret) off another member's subjects:
//!   give each a user limited to its [`Permissions`].
//! - **Faults**: a member that dies leaves its tasks in its consumer; the parent takes back at
//!   once those never delivered, and after the ack wait those delivered, and sends the
//!   untargeted ones to another member with room in its backlog ([`TaskHandle::attempts`]
//!   counts the deliveries), or, with no member left, to the first that joins (the same one
//!   coming back included) within one member timeout after all were taken back; they are lost
//!   past it, or at once if the pool is stopping. Targeted and broadcast tasks are lost with
//!   their member, as in a local pool. A task delivered [`Builder::max_deliveries`] times is
//!   given up on: it ends as lost and goes to the dead-letter stream ([`Pool::dead_letters`]).
//!   A task may thus run more than once (at-least-once); its handle resolves exactly once,
//!   and a second run's end is ignored.
//!   Once the task went to another member, the first one's outputs and end for it are refused.
//! - **One parent per pool**: a parent holds a lease on the pool in a JetStream key-value
//!   bucket and renews it every heartbeat; a second parent is refused with [`Error::InUse`]
//!   and touches nothing, and takes over once the first stopped renewing for a member timeout.
//! - **Stop**: [`Pool::stop`] refuses new tasks, waits for every accepted task to end, tells the
//!   members to leave, and deletes the pool's streams and lease.
//! - **Broker restarts**: clients reconnect; JetStream keeps the streams (file storage);
//!   publishes retry with message ids (so a retry stores nothing twice) up to the broker
//!   timeout, after which a submission fails with [`SubmitError::Broker`]. Members send again
//!   the outputs and ends the parent did not confirm. Silence while the broker was away does
//!   not count against members.
//! - **Broker gone**: once the parent has been cut off from the broker for the broker timeout,
//!   every task under way ends with [`TaskError::Broker`], submissions (those waiting for a
//!   member's backlog included) fail with [`SubmitError::Broker`] until it is back, and
//!   [`Pool::stop`] returns within the stop and broker timeouts. A member cut off that long
//!   leaves on its own, stopping its workers; a member leaving never waits more than two
//!   seconds for its last messages to reach the broker.
//!
//! # The same API as a local pool
//!
//! Errors are the core's: a handle resolves to [`TaskError`] with the worker's own error type
//! in [`TaskError::Failed`] (members send it encoded; the handle decodes it), refusals are
//! [`SubmitError`], and [`Pool::call`] (with [`Pool::call_to`] and [`Pool::try_call`]) answers
//! with a task's first output or the flat [`CallError`]. What is a pool's own over NATS: a task
//! lost with its member is [`TaskError::MemberLost`] (naming the member and why), a broker out
//! of reach [`TaskError::Broker`] or [`SubmitError::Broker`], and a pool with no member, or
//! without the member asked for, refuses with [`Refusal::NoMembers`] or
//! [`Refusal::UnknownMember`]. Where each task goes and who holds it is decided by the core's
//! sans-IO [`Members`](looppool_core::state::members::Members) state, which the testkit
//! model-checks. Handles, deliveries and the output stream are the core's [`TaskHandle`],
//! [`Delivery`] and [`Outputs`]: `member()` names the member (on a handle, the one holding the
//! task, which changes when it moves), `worker()` its worker the task went to (on a handle,
//! once the task ended), and
//! [`TaskHandle::attempts`] counts JetStream deliveries. [`TaskHandle::abort`], a call dropped
//! early, `call_timeout` and `submit_timeout` cancel a task as in a local pool: its handle ends
//! at once, and the member holding it is told to drop it (one that has not received it yet
//! drops it when it comes); the task keeps its place in that member's backlog until the member
//! reports it ended, and is never sent to another member. `submit` returns once the broker
//! stored the task; `try_submit` is synchronous, as in a local pool: it returns once the task is
//! placed. The pool stores tasks in the order they were placed, but for one the broker took
//! only on a retry.
//!
//! The transport is tokio-only (the official `async-nats` client). A member's connection runs
//! on tokio; its workers may run tokio, smol or async-std: pick the local pool's worker runtime.
//!
//! # Subjects and streams
//!
//! A pool named `P` uses these subjects and streams:
//!
//! | subject | carried by | what |
//! |---|---|---|
//! | `looppool.P.join.M` | request and reply | member `M` asks to join; the parent answers |
//! | `looppool.P.stopped` | core NATS | the parent stopped the pool (for members joining again) |
//! | `looppool.P.alive.M` | core NATS | member `M`'s heartbeat |
//! | `looppool.P.leave.M` | core NATS | member `M` leaves |
//! | `looppool.P.ctl.M` | core NATS | the parent tells member `M` to stop, or to drop tasks it cancelled |
//! | `looppool.P.up.M` | core NATS, sent again until confirmed | member `M`'s outputs and task ends, numbered, in order |
//! | `looppool.P.credit.M` | core NATS | how many of `M`'s outputs the program took, and how far `M`'s messages arrived |
//! | `looppool.P.beacon` | core NATS | the parent's heartbeat |
//! | `looppool.P.task.M` | stream `looppool-P-tasks` (work queue) | tasks for member `M`, read by its consumer `M` |
//! | `looppool.P.dead` | stream `looppool-P-dead` (work queue) | tasks given up on, for [`Pool::dead_letters`] |
//! | `$KV.looppool-P.parent` | bucket `looppool-P` (key-value) | the parent's lease on the pool |
//!
//! Messages are postcard-encoded and end with an HMAC-SHA256 tag keyed with the pool's secret
//! over the subject and the message (a join's answer: over the join subject and the member's
//! run); a member announces the message version and its worker's
//! name when it joins, and is refused if either differs from the parent's.
#![forbid(unsafe_code)]

mod broker;
mod error;
mod member;
mod permissions;
mod pool;
mod seal;
mod wire;

/// The NATS client this crate uses, for [`Builder::connect_options`] and
/// [`Member::connect_options`].
pub use async_nats;
pub use error::Error;
pub use looppool_core::state::Refusal;
pub use looppool_core::{
    CallError, Delivery, Failure, Outputs, SubmitError, TaskError, TaskHandle,
};
pub use member::{Left, Member};
pub use permissions::Permissions;
pub use pool::{
    Builder, DeadLetter, JetStreamApi, MemberEvent, MemberEvents, MemberInfo, Pool, Stopped,
};
pub use seal::{Secret, SECRET_VAR};
