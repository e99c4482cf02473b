//! The parent: a pool whose members join over NATS, with the local pool's routing, credit,
//! stop and exactly-once guarantees.
//!
//! `handle` holds what the program gets back (task handles, outputs, member events);
//! `shared` the bookkeeping and the parent's side of joining, leaving and taking tasks back;
//! `tasks` the loops that serve the broker's subjects and streams.

mod dead;
mod handle;
mod lease;
mod reclaim;
mod shared;
mod tasks;

pub use dead::DeadLetter;
pub use handle::{Delivery, MemberEvent, MemberEvents, MemberInfo, Outputs, Stopped, TaskHandle};

use self::lease::Lease;
use self::shared::{Inner, Route, Shared, Sticky};
use self::tasks::{
    consumer_messages, read_ends, read_outputs, send_acks, serve_joins, serve_members, tick,
    Subscriptions,
};
use crate::broker::{self, Broker};
use crate::error::{Error, SubmitError};
use crate::seal::{Refusals, Sealer, Secret};
use crate::wire::{self, Control, Names};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use looppool_core::Worker;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::pin::pin;
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
    _worker: PhantomData<fn(W)>,
}

#[derive(Debug, Clone)]
struct Settings {
    ack_wait: Duration,
    heartbeat: Duration,
    member_timeout: Option<Duration>,
    result_credit: usize,
    backlog: Option<usize>,
    max_deliveries: u32,
    broker_timeout: Duration,
    stop_timeout: Duration,
}

impl Settings {
    fn member_timeout(&self) -> Duration {
        self.member_timeout.unwrap_or(self.heartbeat * 5)
    }

    /// How long the parent's lease on the pool outlives its last renewal: a second parent is
    /// refused for that long after the first stopped renewing it.
    fn lease_time(&self) -> Duration {
        self.member_timeout()
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
                broker_timeout: Duration::from_secs(30),
                stop_timeout: Duration::from_secs(10),
            },
            options: None,
            secret: None,
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

    /// Outputs a member may have stored in the broker that the parent's consumer has not
    /// acknowledged (default 64). A member at the limit waits: back-pressure from a slow
    /// consumer of [`Pool::outputs`] to the members' workers.
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

    /// How long the pool bears with a broker out of reach (default 30 s): a submission keeps
    /// retrying that long; past it, with the parent still cut off, tasks under way end with
    /// [`TaskError::Broker`](crate::TaskError::Broker) and submissions fail until the broker is
    /// back. Members are told it when they join and leave when cut off that long.
    pub fn broker_timeout(mut self, timeout: Duration) -> Self {
        self.settings.broker_timeout = timeout;
        self
    }

    /// How to connect to the server: credentials, TLS, timeouts (the connection's name and
    /// event callback are the pool's own).
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
    /// with [`SubmitError::Broker`], and it leaves the pool's streams and members to the new
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
        )
        .await?;
        let run = crate::seal::random_u64();
        // The lease first: the streams of a live pool are never touched.
        let lease = Lease::acquire(&broker, &names, run, self.settings.lease_time()).await?;
        create_streams(&broker, &names, self.settings.result_credit).await?;
        let (events, _) = broadcast::channel(1024);
        let (outputs_tx, outputs_rx) = async_channel::unbounded();
        let (acks, acks_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            names,
            pool: self.pool,
            broker,
            settings: self.settings,
            worker: W::name(),
            run,
            sealer: Sealer::new(&secret),
            refused: Refusals::default(),
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            events,
            outputs_tx,
            outputs_rx,
            acks,
            acked: Mutex::new(HashMap::new()),
            background: Mutex::new(Vec::new()),
        });
        let subs = Subscriptions::open(&shared).await?;
        let ends = consumer_messages(&shared, &shared.names.end_stream()).await?;
        let outs = consumer_messages(&shared, &shared.names.out_stream()).await?;
        shared.spawn(serve_joins(shared.clone(), subs.join));
        shared.spawn(serve_members(shared.clone(), subs.alive, subs.leave));
        shared.spawn(tick(shared.clone(), lease));
        shared.spawn(read_ends(shared.clone(), ends));
        shared.spawn(read_outputs(shared.clone(), outs));
        shared.spawn(send_acks(shared.clone(), acks_rx));
        tracing::info!(pool = %shared.pool, "pool started; members may join");
        Ok(Pool {
            shared,
            _worker: PhantomData,
        })
    }
}

async fn create_streams(broker: &Broker, names: &Names, result_credit: usize) -> Result<(), Error> {
    let base = stream::Config {
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
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
            name: names.out_stream(),
            subjects: vec![names.out("*")],
            max_messages_per_subject: result_credit as i64,
            discard: DiscardPolicy::New,
            discard_new_per_subject: true,
            ..base.clone()
        },
        stream::Config {
            name: names.end_stream(),
            subjects: vec![names.end("*")],
            ..base.clone()
        },
        stream::Config {
            name: names.dead_stream(),
            subjects: vec![names.dead()],
            max_messages: 10_000,
            ..base
        },
    ];
    for config in configs {
        // A stream left by an earlier pool of this name holds its tasks and consumers.
        let _ = broker.js.delete_stream(&config.name).await;
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

/// A pool of members on any number of hosts, reached through NATS JetStream.
///
/// Routing is the local pool's: round-robin over the live members in the order they joined,
/// targeted to one member, or broadcast to each (sticky broadcasts also reach every member
/// that joins later, before its first task). Each member's JetStream consumer holds at most
/// its capacity of unacknowledged tasks; the parent sends a member at most its backlog.
pub struct Pool<W: Worker> {
    shared: Arc<Shared<W::Output>>,
    _worker: PhantomData<fn(W)>,
}

impl<W: Worker> fmt::Debug for Pool<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared.pool)
            .field("members", &self.members().len())
            .finish()
    }
}

enum Target<'a> {
    Any,
    Member(&'a str),
}

impl<W: Worker> Pool<W> {
    /// A builder for a pool named `pool` on the NATS server at `server`.
    pub fn builder(server: impl Into<String>, pool: impl Into<String>) -> Builder<W> {
        Builder::new(server, pool)
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.shared.pool
    }

    /// The live members, in the order they joined.
    pub fn members(&self) -> Vec<MemberInfo> {
        let inner = self.shared.lock();
        inner.members.iter().map(|m| m.info.clone()).collect()
    }

    /// Unfinished tasks sent to `member`, or `None` if it is not in the pool.
    pub fn outstanding(&self, member: &str) -> Option<usize> {
        let inner = self.shared.lock();
        inner.live(member).map(|i| inner.members[i].outstanding)
    }

    /// Messages on the pool's subjects the parent refused so far: not sealed with the pool's
    /// secret, repeated, from a run of a member that is not in the pool, or ending or feeding
    /// a task the sender does not hold. The first is logged as a warning.
    pub fn refused(&self) -> u64 {
        self.shared.refused.count()
    }

    /// Members joining and leaving, from now on.
    pub fn events(&self) -> MemberEvents {
        MemberEvents {
            rx: self.shared.events.subscribe(),
        }
    }

    /// Waits until at least `n` members are in the pool, and returns them.
    pub async fn wait_for_members(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<MemberInfo>, Error> {
        let wait = async {
            loop {
                let mut notified = pin!(self.shared.changed.notified());
                notified.as_mut().enable();
                let members = self.members();
                if members.len() >= n {
                    return members;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            Error::Timeout(format!(
                "{} of {n} members joined pool {} within {timeout:?}",
                self.members().len(),
                self.shared.pool
            ))
        })
    }

    /// The stream of outputs. Clones share one stream: each output goes to one receiver.
    pub fn outputs(&self) -> Outputs<W::Output> {
        Outputs {
            rx: self.shared.outputs_rx.clone(),
        }
    }

    /// Submits a task to the next member in turn, waiting while that member holds its backlog.
    pub async fn submit(&self, task: W::Task) -> Result<TaskHandle, SubmitError<W::Task>> {
        self.submit_inner(Target::Any, task, true).await
    }

    /// Like [`submit`](Self::submit), refusing with [`SubmitError::Full`] instead of waiting.
    pub async fn try_submit(&self, task: W::Task) -> Result<TaskHandle, SubmitError<W::Task>> {
        self.submit_inner(Target::Any, task, false).await
    }

    /// Submits a task to `member`, waiting while it holds its backlog. If that member leaves
    /// before the task ends, the task is lost (it is never run elsewhere).
    pub async fn submit_to(
        &self,
        member: &str,
        task: W::Task,
    ) -> Result<TaskHandle, SubmitError<W::Task>> {
        self.submit_inner(Target::Member(member), task, true).await
    }

    /// Like [`submit_to`](Self::submit_to), refusing with [`SubmitError::Full`] instead of
    /// waiting.
    pub async fn try_submit_to(
        &self,
        member: &str,
        task: W::Task,
    ) -> Result<TaskHandle, SubmitError<W::Task>> {
        self.submit_inner(Target::Member(member), task, false).await
    }

    /// Sends a task to every live member, after everything submitted to it before; one handle
    /// per member, in the order of [`members`](Self::members).
    pub async fn broadcast(&self, task: W::Task) -> Result<Vec<TaskHandle>, SubmitError<W::Task>> {
        self.broadcast_inner(None, task).await
    }

    /// Like [`broadcast`](Self::broadcast), and also remembered under `key` (replacing an
    /// earlier sticky broadcast with that key): every member that joins later receives the
    /// remembered broadcasts, in the order they were last set, before its first task. With no
    /// member in the pool it is only remembered.
    pub async fn broadcast_sticky(
        &self,
        key: &str,
        task: W::Task,
    ) -> Result<Vec<TaskHandle>, SubmitError<W::Task>> {
        self.broadcast_inner(Some(key), task).await
    }

    fn encode(&self, task: &W::Task) -> Result<Vec<u8>, String> {
        let payload = wire::encode(task)?;
        // Room for the envelope and the headers.
        let limit = self.shared.broker.max_payload().saturating_sub(512);
        if payload.len() > limit {
            return Err(format!(
                "the task is {} bytes; the broker takes messages up to {} bytes (its \
                 max_payload) with room for the envelope",
                payload.len(),
                limit
            ));
        }
        Ok(payload)
    }

    async fn submit_inner(
        &self,
        target: Target<'_>,
        task: W::Task,
        wait: bool,
    ) -> Result<TaskHandle, SubmitError<W::Task>> {
        let payload = match self.encode(&task) {
            Ok(p) => p,
            Err(e) => return Err(SubmitError::Encode(task, e)),
        };
        let shared = &self.shared;
        let (id, member, handle) = loop {
            let mut notified = pin!(shared.changed.notified());
            notified.as_mut().enable();
            {
                let mut inner = shared.lock();
                if inner.closed {
                    return Err(refusal(&inner, task));
                }
                if let Some(why) = &inner.broker_gone {
                    return Err(SubmitError::Broker(task, format!("the broker is {why}")));
                }
                let (k, any) = match target {
                    Target::Any if inner.members.is_empty() => {
                        return Err(SubmitError::NoMember(task))
                    }
                    Target::Any => (inner.cursor % inner.members.len(), true),
                    Target::Member(m) => match inner.live(m) {
                        Some(k) => (k, false),
                        None => return Err(SubmitError::UnknownMember(task, m.into())),
                    },
                };
                let live = &inner.members[k];
                if live.outstanding < live.limit {
                    if any {
                        inner.cursor = k + 1;
                    }
                    let member = inner.members[k].info.name.clone();
                    let route = if any { Route::Any } else { Route::Member };
                    let (id, handle) = inner.place(k, route, 0);
                    break (id, member, handle);
                }
                if !wait {
                    return Err(SubmitError::Full(task));
                }
            }
            notified.await;
        };
        match shared.send_task(id, &member, 0, payload).await {
            Ok(()) => Ok(handle),
            Err(e) => {
                shared.withdraw(id);
                Err(SubmitError::Broker(task, e.to_string()))
            }
        }
    }

    async fn broadcast_inner(
        &self,
        key: Option<&str>,
        task: W::Task,
    ) -> Result<Vec<TaskHandle>, SubmitError<W::Task>> {
        let payload = match self.encode(&task) {
            Ok(p) => p,
            Err(e) => return Err(SubmitError::Encode(task, e)),
        };
        let shared = &self.shared;
        let placed = {
            let mut inner = shared.lock();
            if inner.closed {
                return Err(refusal(&inner, task));
            }
            if let Some(why) = &inner.broker_gone {
                return Err(SubmitError::Broker(task, format!("the broker is {why}")));
            }
            if let Some(key) = key {
                inner.sticky.retain(|s| s.key != key);
                inner.sticky_set += 1;
                let set = inner.sticky_set;
                inner.sticky.push(Sticky {
                    key: key.into(),
                    set,
                    payload: payload.clone(),
                });
            } else if inner.members.is_empty() {
                return Err(SubmitError::NoMember(task));
            }
            (0..inner.members.len())
                .map(|k| {
                    let member = inner.members[k].info.name.clone();
                    let (id, handle) = inner.place(k, Route::Member, 0);
                    (id, member, handle)
                })
                .collect::<Vec<_>>()
        };
        let mut handles = Vec::with_capacity(placed.len());
        for (id, member, handle) in placed {
            if let Err(e) = shared.send_task(id, &member, 0, payload.clone()).await {
                shared.lose(id, &member, 0, format!("the broker did not take it: {e}"));
            }
            handles.push(handle);
        }
        Ok(handles)
    }

    /// Stops the pool gracefully: refuses new submissions, waits until every accepted task
    /// ended and its outputs were received, tells every member to leave and waits for them
    /// (up to the stop timeout), then deletes the pool's streams. Outputs already received
    /// stay readable from [`outputs`](Self::outputs).
    pub async fn stop(&self) -> Stopped {
        let shared = &self.shared;
        shared.lock().closed = true;
        shared.changed.notify_waiters();
        loop {
            let mut notified = pin!(shared.changed.notified());
            notified.as_mut().enable();
            {
                let inner = shared.lock();
                if inner.tasks.is_empty() && inner.reclaiming.is_empty() {
                    break;
                }
            }
            notified.await;
        }
        let failed = shared.lock().failed.clone();
        if let Some(why) = failed {
            // Another parent runs the pool now: its members and streams are not this one's.
            shared.abort_background();
            shared.outputs_tx.close();
            tracing::warn!(pool = %shared.pool, "pool stopped after it failed: {why}");
            let unresponsive = self.members().into_iter().map(|m| m.name).collect();
            return Stopped {
                left: Vec::new(),
                unresponsive,
            };
        }
        let members: Vec<(String, u64)> = {
            let inner = shared.lock();
            let members = inner.members.iter();
            members.map(|m| (m.info.name.clone(), m.nonce)).collect()
        };
        for (m, nonce) in &members {
            shared.control(m, *nonce, Control::Stop).await;
        }
        let members: Vec<String> = members.into_iter().map(|(m, _)| m).collect();
        let deadline = tokio::time::Instant::now() + shared.settings.stop_timeout;
        loop {
            let mut notified = pin!(shared.changed.notified());
            notified.as_mut().enable();
            if shared.lock().members.is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let unresponsive: Vec<String> = self.members().into_iter().map(|m| m.name).collect();
        let left = members
            .into_iter()
            .filter(|m| !unresponsive.contains(m))
            .collect();
        shared.abort_background();
        let js = &shared.broker.js;
        let tidy = async {
            for name in [
                shared.names.tasks_stream(),
                shared.names.out_stream(),
                shared.names.end_stream(),
                shared.names.dead_stream(),
            ] {
                if let Err(e) = js.delete_stream(&name).await {
                    tracing::warn!("cannot delete stream {name}: {}", broker::error_text(&e));
                }
            }
            // Last: a parent may start this pool again at once.
            let bucket = shared.names.lease_bucket();
            if let Err(e) = js.delete_key_value(&bucket).await {
                tracing::warn!("cannot delete bucket {bucket}: {}", broker::error_text(&e));
            }
        };
        // Bounded: a broker out of reach keeps them, and the next parent replaces them.
        if tokio::time::timeout(shared.settings.broker_timeout, tidy)
            .await
            .is_err()
        {
            tracing::warn!("the broker did not answer: the pool's streams and lease stay");
        }
        shared.outputs_tx.close();
        tracing::info!(pool = %shared.pool, ?left, ?unresponsive, "pool stopped");
        Stopped { left, unresponsive }
    }
}

/// Why a submission to a closed pool is refused.
fn refusal<T>(inner: &Inner, task: T) -> SubmitError<T> {
    match &inner.failed {
        Some(why) => SubmitError::Broker(task, format!("the pool failed: {why}")),
        None => SubmitError::Closed(task),
    }
}

impl<W: Worker> Drop for Pool<W> {
    fn drop(&mut self) {
        // Members notice the silence and leave.
        self.shared.abort_background();
    }
}
