//! A member: a host's share of a pool, running the same `Worker` in a local pool of worker
//! processes and taking its tasks from its own JetStream consumer.

mod cancel;
mod join;
mod lanes;
mod round;
mod serve;
mod up;

use crate::broker::{Broker, JetStreamApi};
use crate::error::Error;
use crate::seal::{Sealer, Secret};
use crate::wire::{self, Names, PoolStopped};
use futures_util::{FutureExt, StreamExt};
use join::Settings;
use looppool_core::{Builder as LocalBuilder, Worker};
use round::{AbortOnDrop, Round, RoundEnd};
use serve::Ending;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;
use tokio::sync::watch;

/// Joins a pool over NATS and serves its tasks with a local pool of workers.
///
/// The local pool is a [`looppool_core::Builder`] like any other: its start method, worker
/// count, capacity, worker runtime (tokio, smol or async-std) and task timeout apply. The
/// member announces `workers × capacity` as its capacity, which becomes its JetStream
/// consumer's `max_ack_pending`. The member's own connection to NATS runs on the ambient tokio
/// runtime; workers on smol or async-std reach it through the local pool's runtime-neutral
/// handles.
///
/// ```no_run
/// # use looppool_core::{async_trait, BoxError, Context, Failure, Worker};
/// # struct Doubler;
/// # #[async_trait(?Send)]
/// # impl Worker for Doubler {
/// #     type Task = u64;
/// #     type Output = u64;
/// #     type Error = Failure;
/// #     async fn init(_: &Context<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
/// #     async fn process(&self, n: u64, ctx: &Context<u64>) -> Result<(), Failure> { Ok(()) }
/// # }
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let local = looppool_tokio::builder::<Doubler>().workers(4);
/// let left = looppool_nats::Member::new("nats://10.0.0.5:4222", "doublers", local)
///     .run_until(async { tokio::signal::ctrl_c().await.unwrap() })
///     .await?;
/// println!("left the pool: {}", left.reason);
/// # Ok(())
/// # }
/// ```
pub struct Member<W: Worker> {
    server: String,
    pool: String,
    name: Option<String>,
    options: Option<async_nats::ConnectOptions>,
    secret: Option<Secret>,
    rejoin: bool,
    wait_for_parent: Option<Duration>,
    api: JetStreamApi,
    local: LocalBuilder<W>,
}

impl<W: Worker> fmt::Debug for Member<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("server", &self.server)
            .field("pool", &self.pool)
            .field("name", &self.name)
            .finish()
    }
}

/// How a member's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Left {
    /// The member's name.
    pub member: String,
    /// Why it left: the pool stopped, the shutdown future completed, or the parent went silent.
    pub reason: String,
    /// Tasks it ran to an end.
    pub tasks: u64,
    /// Outputs and task ends sent to the parent a second time (or more) because the parent
    /// did not confirm them within a heartbeat: a lost connection, a broker restart, or a
    /// parent too busy to answer. The parent takes each once.
    pub resent: u64,
    /// Messages this member refused: tasks, controls, credit or beacons not sealed with the
    /// pool's secret, repeated, or from another run of the parent.
    pub refused: u64,
}

impl Left {
    /// Nothing done, nothing counted: a run that ended before it served, or the start of a
    /// member's total.
    fn before_serving(member: &str, reason: String) -> Self {
        Self {
            member: member.into(),
            reason,
            tasks: 0,
            resent: 0,
            refused: 0,
        }
    }
}

impl<W: Worker> Member<W> {
    /// A member of pool `pool` on the NATS server at `server`, running `local`.
    pub fn new(server: impl Into<String>, pool: impl Into<String>, local: LocalBuilder<W>) -> Self {
        Self {
            server: server.into(),
            pool: pool.into(),
            name: None,
            options: None,
            secret: None,
            rejoin: true,
            wait_for_parent: None,
            api: JetStreamApi::Default,
            local,
        }
    }

    /// The secret this member shares with the pool's parent (default: the environment
    /// variable `LOOPPOOL_NATS_SECRET`; running fails without one). See
    /// [`Builder::secret`](crate::Builder::secret).
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// The member's name, unique in the pool (default: the host name and process id). 1 to 64
    /// ASCII letters, digits, `-` or `_`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How to connect to the server: credentials, TLS, timeouts (the connection's name, event
    /// callback and ping interval, 1 s, are the member's own).
    pub fn connect_options(mut self, options: async_nats::ConnectOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// Reaches JetStream as the pool's parent does ([`Builder::jetstream`](crate::Builder::jetstream)).
    pub fn jetstream(mut self, api: JetStreamApi) -> Self {
        self.api = api;
        self
    }

    /// Whether the member joins again after it lost the pool (default `true`): its parent was
    /// silent past the member timeout (a partition, a parent that stalled or died), it evicted
    /// this member, or the broker stayed out of reach past the broker timeout. The member stops
    /// its workers at once (nobody would take their results) and asks to join again, as a new
    /// run, until the parent (or a parent that took the pool over) answers. With `false` it
    /// returns instead.
    pub fn rejoin(mut self, rejoin: bool) -> Self {
        self.rejoin = rejoin;
        self
    }

    /// How long the member waits for the pool's parent to answer its request to join (default:
    /// as long as it takes), when it starts and when it joins again; past it, running ends with
    /// [`Error::Timeout`].
    pub fn wait_for_parent(mut self, wait: Duration) -> Self {
        self.wait_for_parent = Some(wait);
        self
    }

    /// Runs until the pool stops (or, with [`rejoin(false)`](Self::rejoin), until it loses the
    /// pool).
    pub async fn run(self) -> Result<Left, Error> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until the pool stops or `shutdown` completes (a signal, say), joining again after
    /// it lost the pool (see [`rejoin`](Self::rejoin)). On shutdown the member takes no more
    /// tasks, finishes those its workers run, reports them, and leaves; the tasks waiting in
    /// its consumer go to other members.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<Left, Error> {
        let member = self.name.clone().unwrap_or_else(default_name);
        if !wire::valid_name(&self.pool) || !wire::valid_name(&member) {
            return Err(Error::Config(format!(
                "pool {:?} and member {:?}: names must be 1 to 64 ASCII letters, digits, '-' \
                 or '_'",
                self.pool, member
            )));
        }
        let sealer = Sealer::new(&match self.secret.clone() {
            Some(s) => s,
            None => Secret::from_env()?,
        });
        let names = Names::new(&self.pool);
        let broker = Broker::connect(
            &self.server,
            &format!("looppool {} member {member}", self.pool),
            Some(
                self.options
                    .clone()
                    .unwrap_or_else(crate::broker::default_options)
                    .custom_inbox_prefix(names.inbox(&member)),
            ),
            Duration::from_secs(1),
            &self.api,
        )
        .await?;
        let mut shutdown = pin!(shutdown.fuse());
        // Parents that stopped the pool: a member joining again after its parent went quiet
        // hears of it even though it is no longer counted in.
        let (stopped_tx, stopped) = watch::channel(Vec::new());
        let mut stops = broker.subscribe(names.stopped()).await?;
        let stop_sealer = sealer.clone();
        let stop_subject = names.stopped();
        let listener = tokio::spawn(async move {
            while let Some(m) = stops.next().await {
                if let Ok(s) = stop_sealer.unpack::<PoolStopped>(&stop_subject, &m.payload) {
                    stopped_tx.send_modify(|runs: &mut Vec<u64>| runs.push(s.run));
                }
            }
        });
        let _listener = AbortOnDrop(listener);
        let mut total = Left::before_serving(&member, String::new());
        let mut previous = None;
        let mut parent = None;
        loop {
            let round = Round {
                member: &member,
                names: &names,
                sealer: &sealer,
                broker: &broker,
                previous,
                parent,
                stopped: stopped.clone(),
            };
            let RoundEnd {
                left,
                ending,
                nonce,
                parent: last_parent,
            } = match self.round(round, shutdown.as_mut()).await {
                Ok(done) => done,
                Err(Error::Timeout(why)) if !total.reason.is_empty() => {
                    return Err(Error::Timeout(format!("{}; then {why}", total.reason)))
                }
                Err(e) => return Err(e),
            };
            total.tasks += left.tasks;
            total.resent += left.resent;
            total.refused += left.refused;
            total.reason = left.reason;
            previous = Some(nonce);
            parent = last_parent.or(parent);
            match ending {
                Ending::Lost { .. } if self.rejoin => {
                    tracing::warn!(member = %member, "lost the pool ({}); joining again", total.reason);
                }
                Ending::Lost {
                    evicted: Some(reason),
                } => return Err(Error::Evicted(reason)),
                _ => return Ok(total),
            }
        }
    }
}

fn default_name() -> String {
    let host: String = host_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{host}-{}", std::process::id())
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}
