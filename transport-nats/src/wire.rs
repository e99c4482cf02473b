//! What goes over NATS: subject and stream names, and the postcard-encoded messages.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The version of these messages; a member speaking another is refused when it joins.
pub(crate) const VERSION: u32 = 7;

/// Whether `name` can be a pool or member name: 1 to 64 ASCII letters, digits, `-` or `_`
/// (it becomes a NATS subject token and part of stream and consumer names).
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The subjects and stream names of one pool.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pool: String,
}

impl Names {
    pub(crate) fn new(pool: &str) -> Self {
        Self { pool: pool.into() }
    }

    pub(crate) fn pool(&self) -> &str {
        &self.pool
    }

    /// Where member `member` asks to join: a subject of its own, so that a NATS user limited
    /// to one member's subjects cannot join in another's name.
    pub(crate) fn join(&self, member: &str) -> String {
        format!("looppool.{}.join.{member}", self.pool)
    }
    /// The inbox prefix of member `member`: replies to it go there, where only its user may
    /// read them.
    pub(crate) fn inbox(&self, member: &str) -> String {
        format!("_INBOX.{}.{member}", self.pool)
    }
    /// What the answer to the join request with `nonce` is sealed for (its reply subject is
    /// the requester's inbox).
    pub(crate) fn join_reply(join: &str, nonce: u64) -> String {
        format!("{join}.reply.{nonce:x}")
    }
    pub(crate) fn alive(&self, member: &str) -> String {
        format!("looppool.{}.alive.{member}", self.pool)
    }
    pub(crate) fn leave(&self, member: &str) -> String {
        format!("looppool.{}.leave.{member}", self.pool)
    }
    pub(crate) fn ctl(&self, member: &str) -> String {
        format!("looppool.{}.ctl.{member}", self.pool)
    }
    pub(crate) fn credit(&self, member: &str) -> String {
        format!("looppool.{}.credit.{member}", self.pool)
    }
    pub(crate) fn stopped(&self) -> String {
        format!("looppool.{}.stopped", self.pool)
    }
    pub(crate) fn beacon(&self) -> String {
        format!("looppool.{}.beacon", self.pool)
    }
    pub(crate) fn task(&self, member: &str) -> String {
        format!("looppool.{}.task.{member}", self.pool)
    }
    /// Where member `member` sends its parent its outputs and task ends ([`UpMsg`]).
    pub(crate) fn up(&self, member: &str) -> String {
        format!("looppool.{}.up.{member}", self.pool)
    }
    pub(crate) fn tasks_stream(&self) -> String {
        format!("looppool-{}-tasks", self.pool)
    }
    pub(crate) fn dead(&self) -> String {
        format!("looppool.{}.dead", self.pool)
    }
    pub(crate) fn dead_stream(&self) -> String {
        format!("looppool-{}-dead", self.pool)
    }
    /// Every stream of the pool.
    pub(crate) fn streams(&self) -> [String; 2] {
        [self.tasks_stream(), self.dead_stream()]
    }
    /// The key-value bucket of the parent's lease.
    pub(crate) fn lease_bucket(&self) -> String {
        format!("looppool-{}", self.pool)
    }
    /// The member named by the last token of `subject`.
    pub(crate) fn member_of(subject: &str) -> &str {
        subject.rsplit('.').next().unwrap_or_default()
    }
}

/// A member asks to join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Join {
    pub(crate) version: u32,
    /// `Worker::name()` of the member's worker type: it must be the pool's.
    pub(crate) worker: String,
    pub(crate) member: String,
    pub(crate) host: String,
    pub(crate) pid: u32,
    /// Unfinished tasks the member holds at most.
    pub(crate) capacity: u32,
    /// Worker processes (or threads) in the member.
    pub(crate) workers: u32,
    /// Distinguishes this run of the member: a request repeated because its answer was late
    /// is answered again, while another process with the same name is refused.
    pub(crate) nonce: u64,
    /// The run of this member that this one follows, if it lost the pool and joins again: the
    /// parent counts that run gone at once.
    pub(crate) replaces: Option<u64>,
}

/// The parent's answer to a [`Join`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum JoinReply {
    Welcome {
        /// The parent's run: every message it sends the member carries it.
        run: u64,
        ack_wait_ms: u64,
        heartbeat_ms: u64,
        member_timeout_ms: u64,
        /// How long a member may be cut off from the broker before it gives up on the pool.
        broker_timeout_ms: u64,
        /// Outputs the member may have stored and not yet acknowledged by the parent.
        result_credit: u32,
    },
    Refused {
        reason: String,
        /// Whether asking again later may succeed (the name is still held by a run of the
        /// member that is leaving).
        retry: bool,
    },
    /// This run of the member left the pool (or was counted gone) before its join was
    /// answered: it may join again as a new run.
    Anew { reason: String },
}

/// A member says it is alive.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Alive {
    /// The member's run (its join's nonce).
    pub(crate) nonce: u64,
    /// Counts up: a heartbeat repeated by someone else is not news.
    pub(crate) seq: u64,
    /// The parent's run it beats for: one recorded for another parent is not news either.
    pub(crate) run: u64,
}

/// The parent says it is alive.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Beacon {
    pub(crate) run: u64,
    /// Counts up: a beacon repeated by someone else is not news.
    pub(crate) seq: u64,
}

/// A task on its way to a member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskMsg {
    /// The parent's run that sent it.
    pub(crate) run: u64,
    pub(crate) id: u64,
    /// How many times the task was delivered to members before this delivery's consumer.
    pub(crate) prior: u32,
    /// The postcard encoding of the `Worker::Task`.
    pub(crate) payload: Vec<u8>,
}

/// The parent tells one run of a member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CtlMsg {
    pub(crate) run: u64,
    /// The member's run it is meant for.
    pub(crate) nonce: u64,
    pub(crate) control: Control,
}

/// What the parent tells a member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Control {
    /// The pool stopped: leave.
    Stop,
    /// The parent no longer counts this member in (it went silent): leave at once.
    Evicted { reason: String },
    /// The program cancelled these tasks: drop them, running or yet to come.
    Cancel { ids: Vec<u64> },
}

/// What the parent has of one run of a member: how many of its outputs the program took, in
/// all (the member may send `result_credit` more than that), and the number of the last
/// [`UpMsg`] received with all those before it (the member sends again what comes after).
/// Sent as messages come in, and repeated every heartbeat, so a lost one does no harm.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Credit {
    pub(crate) run: u64,
    /// The member's run it counts for.
    pub(crate) nonce: u64,
    pub(crate) acked: u64,
    pub(crate) received: u64,
}

/// The parent stopped the pool, for members joining again that it no longer counts in.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct PoolStopped {
    pub(crate) run: u64,
}

/// A member says why it leaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Leave {
    pub(crate) nonce: u64,
    pub(crate) reason: String,
    /// Tasks delivered to it that it handed back without starting them: those deliveries do
    /// not count toward a task's most deliveries.
    pub(crate) returned: Vec<u64>,
}

/// What a member tells its parent, in order: its workers' outputs and its tasks' ends. Sent
/// on core NATS, not stored: the member keeps each until the parent says it has it
/// ([`Credit::received`]), and sends again, in order, what the parent did not confirm in time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UpMsg {
    /// The member's run that sent it.
    pub(crate) nonce: u64,
    /// The number of the first item: the run's items are counted from 1, and the parent takes
    /// each once, in order.
    pub(crate) seq: u64,
    /// Items numbered `seq`, `seq + 1`, …
    pub(crate) body: Vec<Up>,
}

/// One item of an [`UpMsg`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Up {
    Output(OutputMsg),
    End(EndMsg),
}

/// An output of a member's worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutputMsg {
    /// The task that emitted it, or `None` for an unsolicited output.
    pub(crate) task: Option<u64>,
    /// The member's worker that emitted it.
    pub(crate) worker: u32,
    /// The postcard encoding of the `Worker::Output`, or why the member could not send it
    /// (counted all the same, so that the task's end does not wait for it).
    pub(crate) payload: Result<Vec<u8>, String>,
}

/// A task given up on, on the dead-letter stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeadMsg {
    pub(crate) id: u64,
    pub(crate) deliveries: u32,
    pub(crate) reason: String,
    /// The postcard encoding of the `Worker::Task`.
    pub(crate) payload: Vec<u8>,
}

/// How a task ended in a member.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EndMsg {
    pub(crate) id: u64,
    /// Deliveries of the task to members, this one included.
    pub(crate) deliveries: u32,
    /// Outputs this run emitted, all sent before this message.
    pub(crate) outputs: u32,
    /// The member's worker that ran it (0 if none did).
    pub(crate) worker: u32,
    pub(crate) outcome: Outcome,
}

/// The end of one run of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    Done,
    /// The worker's error, postcard-encoded: the parent decodes it as the worker's type.
    Failed(Vec<u8>),
    Panicked(String),
    TimedOut(u64),
    Lost(String),
    /// The task, or the worker's error, could not be carried: why.
    Codec(String),
    /// The parent cancelled it.
    Cancelled,
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(value).map_err(|e| e.to_string())
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_subject_tokens() {
        assert!(valid_name("pool-1_a"));
        for bad in ["", "a.b", "a*", "a>", "a b", "ü", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?} accepted");
        }
        assert_eq!(Names::member_of("looppool.p.alive.m-1"), "m-1");
        assert_eq!(Names::new("p").task("m"), "looppool.p.task.m");
    }

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let end = EndMsg {
            id: 7,
            deliveries: 2,
            outputs: 3,
            worker: 1,
            outcome: Outcome::Failed("no".into()),
        };
        let back: EndMsg = decode(&encode(&end).unwrap()).unwrap();
        assert_eq!((back.id, back.deliveries, back.outputs), (7, 2, 3));
        assert_eq!(back.outcome, Outcome::Failed("no".into()));
        assert!(decode::<EndMsg>(&[0xff, 0xff, 0xff]).is_err());
    }
}
