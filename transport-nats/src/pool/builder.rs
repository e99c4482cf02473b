//! Configuring and starting a [`Pool`]: the builder, its settings, the pool's streams.

use super::arrivals::{read_up, send_acks};
use super::cancel::send_cancels;
use super::inner::Inner;
use super::lease::Lease;
use super::recover::recovery;
use super::shared::Shared;
use super::store::store_in_order;
use super::tasks::{keep_lease, serve_joins, serve_members, tick, watch_streams, Subscriptions};
use super::Pool;
use crate::broker::{self, Broker, JetStreamApi, PING};
use crate::error::Error;
use crate::seal::{Refusals, Sealer, Secret};
use crate::wire::{self, Names};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use looppool_core::{OutputSender, Worker};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, Notify};

/// Configures and starts a [`Pool`] whose members join over NATS.
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
/// #     async fn process(&self, n: u64, ctx: &Context<u64>) -> Result<(), Failure> {
/// #         ctx.put(n * 2).await?;
/// #         Ok(())
/// #     }
/// # }
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// let pool = looppool_nats::Pool::<Doubler>::builder("nats://127.0.0.1:4222", "doublers")
///     .ack_wait(Duration::from_secs(10))
///     .start()
///     .await?;
/// pool.wait_for_members(2, Duration::from_secs(30)).await?;
/// let outputs = pool.outputs();
/// pool.submit(21).await?.await?;
/// assert_eq!(outputs.recv().await.unwrap().into_value(), 42);
/// pool.stop().await;
/// # Ok(())
/// # }
/// ```
pub struct Builder<W> {
    server: String,
    pool: String,
    settings: Settings,
    options: Option<async_nats::ConnectOptions>,
    secret: Option<Secret>,
    api: JetStreamApi,
    _worker: PhantomData<fn(W)>,
}

#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) ack_wait: Duration,
    pub(super) heartbeat: Duration,
    pub(super) member_timeout: Option<Duration>,
    pub(super) result_credit: usize,
    pub(super) backlog: Option<usize>,
    pub(super) max_deliveries: u32,
    pub(super) stream_bytes: i64,
    pub(super) storage: StorageType,
    pub(super) replicas: usize,
    pub(super) broker_timeout: Duration,
    pub(super) stop_timeout: Duration,
}

impl Settings {
    pub(super) fn member_timeout(&self) -> Duration {
        self.member_timeout.unwrap_or(self.heartbeat * 5)
    }

    /// How long the parent's lease on the pool outlives its last renewal: a second parent is
    /// refused for that long after the first stopped renewing it.
    pub(super) fn lease_time(&self) -> Duration {
        self.member_timeout()
    }

    /// How long a member's run must have been silent for a new run under its name (a
    /// restarted process) to take its place: four heartbeats, or half the member timeout if
    /// that is longer, so a run whose heartbeats are merely late keeps its name.
    pub(super) fn replace_after(&self) -> Duration {
        (self.heartbeat * 4).max(self.member_timeout() / 2)
    }

    /// How long a consumer of the pool may go unread before the server deletes it: well past
    /// any pause of a live reader (a member between pulls, a reclaim waiting out the ack
    /// wait), so only a dead parent's or member's consumer goes.
    pub(super) fn consumer_expiry(&self) -> Duration {
        ((self.ack_wait + self.member_timeout()) * 2 + self.broker_timeout)
            .max(Duration::from_secs(60))
    }
}

impl<W> fmt::Debug for Builder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("server", &self.server)
            .field("pool", &self.pool)
            .field("settings", &self.settings)
            .finish()
    }
}

impl<W: Worker> Builder<W> {
    /// A pool named `pool` on the NATS server at `server` (`nats://host:port`, or several
    /// addresses separated by commas). Members join by naming the same server and pool.
    pub fn new(server: impl Into<String>, pool: impl Into<String>) -> Self {
        Self {
            server: server.into(),
            pool: pool.into(),
            settings: Settings {
                ack_wait: Duration::from_secs(30),
                heartbeat: Duration::from_millis(500),
                member_timeout: None,
                result_credit: 64,
                backlog: None,
                max_deliveries: 5,
                stream_bytes: 1 << 30,
                storage: StorageType::File,
                replicas: 1,
                broker_timeout: Duration::from_secs(30),
                stop_timeout: Duration::from_secs(10),
            },
            options: None,
            secret: None,
            api: JetStreamApi::Default,
            _worker: PhantomData,
        }
    }

    /// The secret the pool's members share with this parent (default: the environment
    /// variable `LOOPPOOL_NATS_SECRET`; starting fails without one). Every message of the
    /// pool is sealed with it: a client of the server without it cannot act on the pool.
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// How long a member may hold a task without acknowledging it before JetStream
    /// redelivers it (default 30 s). Members report progress on running tasks, so only a
    /// member that died or lost the broker lets it run out; its tasks then go to another
    /// member. At least 100 ms.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.settings.ack_wait = wait;
        self
    }

    /// How often members and the parent say they are alive (default 500 ms; at least 10 ms).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.settings.heartbeat = every;
        self
    }

    /// How long a member may stay silent before the parent counts it as gone (default five
    /// heartbeats). Members likewise leave a parent silent this long.
    pub fn member_timeout(mut self, timeout: Duration) -> Self {
        self.settings.member_timeout = Some(timeout);
        self
    }

    /// Outputs of a member that the program has not taken from [`Pool::outputs`] (dropped
    /// their [`Delivery`](crate::Delivery)) at most (default 64). A member at the limit holds
    /// its further outputs back, in order, and the end of each task with an output held:
    /// back-pressure from a slow consumer of [`Pool::outputs`] to the members' workers. The
    /// parent refuses an output past it (its task then fails, saying so).
    pub fn result_credit(mut self, n: usize) -> Self {
        self.settings.result_credit = n;
        self
    }

    /// Unfinished tasks the parent sends one member at most (default: the capacity the
    /// member announced). The member's consumer holds `capacity` of them at once
    /// (`max_ack_pending`); the rest wait in the stream. A submission to a member at its
    /// backlog waits, or with `try_*` is refused.
    pub fn backlog(mut self, n: usize) -> Self {
        self.settings.backlog = Some(n);
        self
    }

    /// How many times a task may be delivered to members that left or died without ending it
    /// (default 5; at least 1). A task that reaches it (one that kills its member, say) is not
    /// sent again: it ends as lost, with a cause that names its deliveries, and is stored on
    /// the pool's dead-letter stream for [`Pool::dead_letters`].
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.settings.max_deliveries = n;
        self
    }

    /// The most bytes each of the pool's streams holds (default 1 GiB): tasks waiting for
    /// their members, and dead letters. A submission that would take the task stream past it
    /// fails with [`SubmitError::Broker`](crate::SubmitError::Broker). Messages are at most the
    /// server's `max_payload` in any case.
    pub fn stream_bytes(mut self, bytes: u64) -> Self {
        self.settings.stream_bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self
    }

    /// Where JetStream keeps the pool's streams and lease (default: files, which survive a
    /// broker restart).
    pub fn storage(mut self, storage: async_nats::jetstream::stream::StorageType) -> Self {
        self.settings.storage = storage;
        self
    }

    /// Copies of each of the pool's streams and of its lease in a clustered JetStream
    /// (default 1; at most 5).
    pub fn replicas(mut self, n: usize) -> Self {
        self.settings.replicas = n;
        self
    }

    /// How to reach JetStream (default: the account's own): through a domain (a leaf node's,
    /// say) or an API prefix. Members must say the same
    /// ([`Member::jetstream`](crate::Member::jetstream)).
    pub fn jetstream(mut self, api: JetStreamApi) -> Self {
        self.api = api;
        self
    }

    /// How long the pool bears with a broker out of reach (default 30 s): a submission keeps
    /// retrying that long; past it, with the parent still cut off, tasks under way end with
    /// [`TaskError::Broker`](crate::TaskError::Broker) and submissions fail until the broker is
    /// back. Members are told it when they join and leave when cut off that long.
    pub fn broker_timeout(mut self, timeout: Duration) -> Self {
        self.settings.broker_timeout = timeout;
        self
    }

    /// How to connect to the server: credentials, TLS, timeouts (the connection's name, event
    /// callback and ping interval, a quarter of the member timeout, are the pool's own).
    pub fn connect_options(mut self, options: async_nats::ConnectOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// How long [`Pool::stop`] waits for members to leave once every task ended (default 10 s).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.settings.stop_timeout = timeout;
        self
    }

    fn check(&self) -> Result<(), Error> {
        let s = &self.settings;
        let fail = |m: &str| Err(Error::Config(m.into()));
        if !wire::valid_name(&self.pool) {
            return fail("the pool name must be 1 to 64 ASCII letters, digits, '-' or '_'");
        }
        if s.ack_wait < Duration::from_millis(100) {
            return fail("ack_wait must be at least 100 ms");
        }
        if s.heartbeat < Duration::from_millis(10) {
            return fail("heartbeat must be at least 10 ms");
        }
        if s.member_timeout() <= s.heartbeat {
            return fail("member_timeout must be longer than the heartbeat");
        }
        if s.result_credit == 0 || s.backlog == Some(0) || s.max_deliveries == 0 {
            return fail("result_credit, backlog and max_deliveries must be at least 1");
        }
        if !(1..=5).contains(&s.replicas) {
            return fail("replicas must be 1 to 5");
        }
        if s.stream_bytes < 1024 {
            return fail("stream_bytes must be at least 1 KiB");
        }
        Ok(())
    }

    /// Connects, takes the pool's lease, creates the pool's streams (replacing those of an
    /// earlier parent of the pool, whose lease ran out) and starts serving joins. Must run
    /// inside a tokio runtime.
    ///
    /// Fails with [`Error::InUse`] while another parent of the pool lives: a parent renews its
    /// lease every heartbeat, and one that died is taken over a member timeout after its last
    /// renewal. A parent that finds its lease taken (it was cut off from the broker that
    /// long, and another parent started) fails: its tasks end as lost, submissions are refused
    /// with [`SubmitError::Broker`](crate::SubmitError::Broker), and it leaves the pool's streams and members to the new
    /// parent.
    pub async fn start(self) -> Result<Pool<W>, Error> {
        self.check()?;
        let secret = match self.secret {
            Some(s) => s,
            None => Secret::from_env()?,
        };
        let names = Names::new(&self.pool);
        let broker = Broker::connect(
            &self.server,
            &format!("looppool {} parent", self.pool),
            self.options.clone(),
            // A lost connection shows well within a member timeout.
            (self.settings.member_timeout() / 4).clamp(Duration::from_millis(100), PING),
            &self.api,
        )
        .await?;
        let run = crate::seal::random_u64();
        // The lease first: the streams of a live pool are never touched.
        let lease = Lease::acquire(&broker, &names, run, &self.settings).await?;
        if let Err(e) = create_streams(&broker, &names, &self.settings, true).await {
            lease.release().await;
            return Err(e);
        }
        let (events, _) = broadcast::channel(1024);
        let outputs_tx = OutputSender::new();
        let (acks, acks_rx) = mpsc::unbounded_channel();
        let (lost_tx, lost_rx) = mpsc::unbounded_channel();
        let (cancels, cancels_rx) = mpsc::unbounded_channel();
        let (store, store_rx) = mpsc::unbounded_channel();
        let max_deliveries = self.settings.max_deliveries;
        // Tasks taken back wait this long for a member to join.
        let wait = self.settings.member_timeout();
        let shared = Arc::new_cyclic(|me: &std::sync::Weak<Shared<W::Output>>| Shared {
            names,
            pool: self.pool,
            broker,
            settings: self.settings,
            worker: W::name(),
            run,
            sealer: Sealer::new(&secret),
            refused: Refusals::default(),
            stored: Default::default(),
            // Handles cancel through the pool's state.
            inner: Mutex::new(Inner::new(max_deliveries, wait, me.clone())),
            changed: Notify::new(),
            events,
            outputs_tx,
            acks,
            acked: Mutex::new(HashMap::new()),
            background: Mutex::new(Vec::new()),
            calls: Mutex::new(HashMap::new()),
            lost: lost_tx,
            cancels,
            store,
        });
        let subs = match Subscriptions::open(&shared).await {
            Ok(opened) => opened,
            Err(e) => {
                // A parent that did not start holds no lease: the next may start at once.
                lease.release().await;
                return Err(e);
            }
        };
        shared.spawn(serve_joins(shared.clone(), subs.join));
        shared.spawn(serve_members(shared.clone(), subs.alive, subs.leave));
        shared.spawn(tick(shared.clone()));
        shared.spawn(watch_streams(shared.clone()));
        shared.spawn(keep_lease(shared.clone(), lease));
        shared.spawn(read_up(shared.clone(), subs.up));
        shared.spawn(send_acks(shared.clone(), acks_rx));
        shared.spawn(recovery(shared.clone(), lost_rx));
        shared.spawn(send_cancels(Arc::downgrade(&shared), cancels_rx));
        shared.spawn(store_in_order(Arc::downgrade(&shared), store_rx));
        tracing::info!(pool = %shared.pool, "pool started; members may join");
        Ok(Pool {
            shared,
            _worker: PhantomData,
        })
    }
}

/// Creates the pool's streams; with `replace`, deleting those of an earlier parent first
/// (which only a parent holding the lease does), else keeping any that are there.
pub(super) async fn create_streams(
    broker: &Broker,
    names: &Names,
    s: &Settings,
    replace: bool,
) -> Result<(), Error> {
    let base = stream::Config {
        retention: RetentionPolicy::WorkQueue,
        storage: s.storage,
        num_replicas: s.replicas,
        max_bytes: s.stream_bytes,
        max_message_size: i32::try_from(broker.max_payload()).unwrap_or(i32::MAX),
        // Full: refuse what comes, never drop what waits.
        discard: DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let configs = [
        stream::Config {
            name: names.tasks_stream(),
            subjects: vec![names.task("*")],
            ..base.clone()
        },
        stream::Config {
            name: names.dead_stream(),
            subjects: vec![names.dead()],
            max_messages: 10_000,
            // The latest dead letters matter most.
            discard: DiscardPolicy::Old,
            ..base
        },
    ];
    for config in configs {
        // A stream left by an earlier parent of the pool holds its tasks and consumers.
        if replace {
            let _ = broker.js.delete_stream(&config.name).await;
        } else if broker.js.get_stream(&config.name).await.is_ok() {
            continue;
        }
        broker.js.create_stream(config.clone()).await.map_err(|e| {
            Error::Broker(format!(
                "cannot create stream {} (is JetStream enabled on the server?): {}",
                config.name,
                broker::error_text(&e)
            ))
        })?;
    }
    Ok(())
}
