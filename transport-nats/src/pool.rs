//! The parent: a pool whose members join over NATS, with the local pool's routing, credit,
//! stop and exactly-once guarantees.

use crate::broker::{self, Broker, PublishFailure};
use crate::error::{Error, SubmitError, TaskError};
use crate::wire::{
    self, Control, Credit, EndMsg, Join, JoinReply, Leave, Names, OutputMsg, TaskMsg,
};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{AckKind, Message as JsMessage};
use futures_util::StreamExt;
use looppool_core::Worker;
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::AbortHandle;

/// Configures and starts a [`Pool`] whose members join over NATS.
///
/// ```no_run
/// # use looppool_core::{async_trait, BoxError, Context, Worker};
/// # struct Doubler;
/// # #[async_trait(?Send)]
/// # impl Worker for Doubler {
/// #     type Task = u64;
/// #     type Output = u64;
/// #     async fn init(_: &Context<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
/// #     async fn process(&self, n: u64, ctx: &Context<u64>) -> Result<(), BoxError> {
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
    _worker: PhantomData<fn(W)>,
}

#[derive(Debug, Clone)]
struct Settings {
    ack_wait: Duration,
    heartbeat: Duration,
    member_timeout: Option<Duration>,
    result_credit: usize,
    backlog: Option<usize>,
    broker_timeout: Duration,
    stop_timeout: Duration,
}

impl Settings {
    fn member_timeout(&self) -> Duration {
        self.member_timeout.unwrap_or(self.heartbeat * 5)
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
                broker_timeout: Duration::from_secs(30),
                stop_timeout: Duration::from_secs(10),
            },
            _worker: PhantomData,
        }
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

    /// How long a submission keeps retrying while the broker does not answer (default 30 s).
    pub fn broker_timeout(mut self, timeout: Duration) -> Self {
        self.settings.broker_timeout = timeout;
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
        if s.result_credit == 0 || s.backlog == Some(0) {
            return fail("result_credit and backlog must be at least 1");
        }
        Ok(())
    }

    /// Connects, creates the pool's streams (replacing those of an earlier pool of the same
    /// name) and starts serving joins. Must run inside a tokio runtime.
    pub async fn start(self) -> Result<Pool<W>, Error> {
        self.check()?;
        let names = Names::new(&self.pool);
        let broker =
            Broker::connect(&self.server, &format!("looppool {} parent", self.pool)).await?;
        create_streams(&broker, &names, self.settings.result_credit).await?;
        let (events, _) = broadcast::channel(1024);
        let (outputs_tx, outputs_rx) = async_channel::unbounded();
        let (acks, acks_rx) = mpsc::unbounded_channel();
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            names,
            pool: self.pool,
            broker,
            settings: self.settings,
            worker: W::name(),
            run: format!("{run:x}"),
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
        shared.spawn(tick(shared.clone()));
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

/// What a member told the parent when it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberInfo {
    /// The member's name, unique in the pool.
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// Unfinished tasks it holds at most: its consumer's `max_ack_pending`.
    pub capacity: usize,
    /// Worker processes (or threads) it runs.
    pub workers: usize,
}

/// A member joined or left.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberEvent {
    /// A member joined; tasks may now be routed to it.
    Joined(MemberInfo),
    /// A member left (it said so, or went silent past the member timeout); no task is routed
    /// to it any more, and those it held go to other members.
    Left {
        /// Its name.
        member: String,
        /// Why.
        reason: String,
    },
}

/// The stream of [`MemberEvent`]s from the moment it was taken.
#[derive(Debug)]
pub struct MemberEvents {
    rx: broadcast::Receiver<MemberEvent>,
}

impl MemberEvents {
    /// The next event; `None` once the pool is dropped. Events missed by a receiver that fell
    /// more than 1024 behind are skipped.
    pub async fn recv(&mut self) -> Option<MemberEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// How a pool stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stopped {
    /// Members that left when told to.
    pub left: Vec<String>,
    /// Members that did not leave within the stop timeout.
    pub unresponsive: Vec<String>,
}

#[derive(Debug)]
struct Status {
    member: String,
    deliveries: u32,
}

/// Resolves, exactly once, to how one submitted task ended.
///
/// A task whose member dies is redelivered to another member, so it may run more than once;
/// its handle still resolves once. Dropping the handle does not cancel the task.
#[must_use = "a task handle tells how the task ended; drop it explicitly to ignore that"]
#[derive(Debug)]
pub struct TaskHandle {
    id: u64,
    status: Arc<Mutex<Status>>,
    rx: oneshot::Receiver<Result<(), TaskError>>,
}

impl TaskHandle {
    /// The task's id, which tags its outputs ([`Delivery::task_id`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The member that ran the task (once it ended), or the one it was sent to.
    pub fn member(&self) -> String {
        lock(&self.status).member.clone()
    }

    /// How many times JetStream delivered the task to a member: 1, plus one per redelivery
    /// after a member died holding it. Read it after awaiting the handle by reference
    /// (`(&mut handle).await`).
    pub fn deliveries(&self) -> u32 {
        lock(&self.status).deliveries
    }
}

impl Future for TaskHandle {
    type Output = Result<(), TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(TaskError::Lost {
                    member: lock(&self.status).member.clone(),
                    reason: "the pool was dropped".into(),
                })
            })
        })
    }
}

/// One output of a member's worker, acknowledged to the broker (returning one result credit
/// to its member) when dropped.
pub struct Delivery<O> {
    member: String,
    task: Option<u64>,
    value: Option<O>,
    message: Option<JsMessage>,
    acks: mpsc::UnboundedSender<(String, JsMessage)>,
}

impl<O: fmt::Debug> fmt::Debug for Delivery<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("member", &self.member)
            .field("task", &self.task)
            .field("value", &self.value)
            .finish()
    }
}

impl<O> Delivery<O> {
    /// The member that emitted it.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The task that emitted it, or `None` for an unsolicited output.
    pub fn task_id(&self) -> Option<u64> {
        self.task
    }

    /// The output.
    pub fn value(&self) -> &O {
        self.value
            .as_ref()
            .expect("value is taken only on consumption")
    }

    /// Acknowledges it now (dropping does the same).
    pub fn ack(self) {}

    /// Takes the output, acknowledging it.
    pub fn into_value(mut self) -> O {
        self.value.take().expect("value is taken only once")
    }
}

impl<O> Drop for Delivery<O> {
    fn drop(&mut self) {
        if let Some(m) = self.message.take() {
            let _ = self.acks.send((std::mem::take(&mut self.member), m));
        }
    }
}

/// The stream of every member's outputs.
#[derive(Debug)]
pub struct Outputs<O> {
    rx: async_channel::Receiver<Delivery<O>>,
}

impl<O> Clone for Outputs<O> {
    fn clone(&self) -> Self {
        Self {
            rx: self.rx.clone(),
        }
    }
}

impl<O> Outputs<O> {
    /// The next output; `None` once the pool stopped and every output was taken.
    pub async fn recv(&self) -> Option<Delivery<O>> {
        self.rx.recv().await.ok()
    }

    /// The next output if one is waiting.
    pub fn try_recv(&self) -> Option<Delivery<O>> {
        self.rx.try_recv().ok()
    }
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
                    return Err(SubmitError::Closed(task));
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
                return Err(SubmitError::Closed(task));
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
                shared.lose(id, &member, format!("the broker did not take it: {e}"));
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
        let members: Vec<String> = self.members().into_iter().map(|m| m.name).collect();
        for m in &members {
            shared.control(m, &Control::Stop).await;
        }
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
        for name in [
            shared.names.tasks_stream(),
            shared.names.out_stream(),
            shared.names.end_stream(),
        ] {
            if let Err(e) = shared.broker.js.delete_stream(&name).await {
                tracing::warn!("cannot delete stream {name}: {}", broker::error_text(&e));
            }
        }
        shared.outputs_tx.close();
        tracing::info!(pool = %shared.pool, ?left, ?unresponsive, "pool stopped");
        Stopped { left, unresponsive }
    }
}

impl<W: Worker> Drop for Pool<W> {
    fn drop(&mut self) {
        // Members notice the silence and leave.
        self.shared.abort_background();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Untargeted: goes to another member if its member dies.
    Any,
    /// Targeted or broadcast: lost with its member.
    Member,
}

struct Pending {
    member: String,
    route: Route,
    tx: Option<oneshot::Sender<Result<(), TaskError>>>,
    status: Arc<Mutex<Status>>,
    /// Outputs received per member that ran it.
    seen: Vec<(String, u32)>,
    /// An end that arrived before all the outputs it counts.
    parked: Option<(String, EndMsg)>,
    /// Why an output of the task could not be delivered: the task then fails.
    dropped: Option<String>,
}

impl Pending {
    fn seen_from(&self, member: &str) -> u32 {
        self.seen
            .iter()
            .find(|(m, _)| m == member)
            .map_or(0, |(_, n)| *n)
    }
}

struct Live {
    info: MemberInfo,
    last_seen: Instant,
    outstanding: usize,
    limit: usize,
}

struct Sticky {
    key: String,
    /// Which setting this is (the value of `Inner::sticky_set` then).
    set: u64,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    closed: bool,
    next_id: u64,
    members: Vec<Live>,
    cursor: usize,
    tasks: HashMap<u64, Pending>,
    /// Sticky broadcasts, in the order they were last set.
    sticky: Vec<Sticky>,
    /// How many sticky broadcasts were ever set.
    sticky_set: u64,
    /// Members gone whose tasks are being taken back from their consumers.
    reclaiming: HashSet<String>,
}

impl Inner {
    fn live(&self, member: &str) -> Option<usize> {
        self.members.iter().position(|m| m.info.name == member)
    }

    /// Records a task for live member `k`.
    fn place(&mut self, k: usize, route: Route, deliveries: u32) -> (u64, TaskHandle) {
        let live = &mut self.members[k];
        live.outstanding += 1;
        let member = live.info.name.clone();
        self.record(member, route, deliveries)
    }

    /// Records a task for `member` (live, or joining: then counted when it goes live).
    fn record(&mut self, member: String, route: Route, deliveries: u32) -> (u64, TaskHandle) {
        self.next_id += 1;
        let id = self.next_id;
        let status = Arc::new(Mutex::new(Status {
            member: member.clone(),
            deliveries,
        }));
        let (tx, rx) = oneshot::channel();
        self.tasks.insert(
            id,
            Pending {
                member,
                route,
                tx: Some(tx),
                status: status.clone(),
                seen: Vec::new(),
                parked: None,
                dropped: None,
            },
        );
        (id, TaskHandle { id, status, rx })
    }

    /// Ends task `id` with `result`, as reported by (or lost with) `member`.
    fn finish(&mut self, id: u64, member: &str, deliveries: u32, result: Result<(), TaskError>) {
        let Some(mut p) = self.tasks.remove(&id) else {
            return;
        };
        if let Some(k) = self.live(&p.member) {
            self.members[k].outstanding -= 1;
        }
        {
            let mut status = lock(&p.status);
            status.member = member.into();
            status.deliveries = status.deliveries.max(deliveries);
        }
        let result = match (result, p.dropped.take()) {
            (Ok(()), Some(why)) => Err(TaskError::Failed {
                message: format!("an output of the task could not be delivered: {why}"),
            }),
            (result, _) => result,
        };
        match p.tx.take() {
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => {
                if let Err(e) = result {
                    tracing::warn!(member, task = id, "sticky broadcast for a new member: {e}");
                }
            }
        }
    }
}

struct Shared<O> {
    names: Names,
    pool: String,
    broker: Broker,
    settings: Settings,
    worker: &'static str,
    /// Distinguishes this pool's message ids from an earlier pool's of the same name.
    run: String,
    inner: Mutex<Inner>,
    /// Notified whenever a task ends, a member joins or leaves, or the pool closes.
    changed: Notify,
    events: broadcast::Sender<MemberEvent>,
    outputs_tx: async_channel::Sender<Delivery<O>>,
    outputs_rx: async_channel::Receiver<Delivery<O>>,
    acks: mpsc::UnboundedSender<(String, JsMessage)>,
    /// Per member, how many of its outputs the parent acknowledged.
    acked: Mutex<HashMap<String, u64>>,
    background: Mutex<Vec<AbortHandle>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<O: DeserializeOwned + Send + 'static> Shared<O> {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        lock(&self.background).push(tokio::spawn(future).abort_handle());
    }

    fn abort_background(&self) {
        for task in lock(&self.background).drain(..) {
            task.abort();
        }
    }

    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    async fn send_task(
        &self,
        id: u64,
        member: &str,
        prior: u32,
        payload: Vec<u8>,
    ) -> Result<(), PublishFailure> {
        let msg = wire::encode(&TaskMsg { id, prior, payload }).map_err(PublishFailure::Refused)?;
        let msg_id = format!("{}-{id}-{member}-{prior}", self.run);
        let deadline = Instant::now() + self.settings.broker_timeout;
        broker::publish(
            &self.broker.js,
            &self.names.task(member),
            &msg_id,
            &msg,
            Some(deadline),
        )
        .await
    }

    /// Forgets a task the broker did not take.
    fn withdraw(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(p) = inner.tasks.remove(&id) {
            if let Some(k) = inner.live(&p.member) {
                inner.members[k].outstanding -= 1;
            }
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    fn lose(&self, id: u64, member: &str, reason: String) {
        let error = TaskError::Lost {
            member: member.into(),
            reason,
        };
        self.lock().finish(id, member, 0, Err(error));
        self.changed.notify_waiters();
    }

    /// Tells `member` how many of its outputs were acknowledged.
    async fn grant(&self, member: &str) {
        let acked = lock(&self.acked).get(member).copied().unwrap_or(0);
        if let Ok(bytes) = wire::encode(&Credit { acked }) {
            let subject = self.names.credit(member);
            let _ = self.broker.client.publish(subject, bytes.into()).await;
        }
    }

    async fn control(&self, member: &str, control: &Control) {
        if let Ok(bytes) = wire::encode(control) {
            let subject = self.names.ctl(member);
            if let Err(e) = self.broker.client.publish(subject, bytes.into()).await {
                tracing::warn!(member, "cannot tell the member to stop: {e}");
            }
        }
    }

    async fn on_join(self: &Arc<Self>, join: Join) -> JoinReply {
        let refuse = |reason: String| {
            tracing::warn!(member = %join.member, host = %join.host, "join refused: {reason}");
            JoinReply::Refused { reason }
        };
        if join.version != wire::VERSION {
            return refuse(format!(
                "protocol version {} is not this pool's {}",
                join.version,
                wire::VERSION
            ));
        }
        if join.worker != self.worker {
            return refuse(format!(
                "the member runs worker {:?}; this pool runs {:?}",
                join.worker, self.worker
            ));
        }
        if !wire::valid_name(&join.member) {
            return refuse(format!("member name {:?} is not usable", join.member));
        }
        if join.capacity == 0 {
            return refuse("capacity 0".into());
        }
        {
            let inner = self.lock();
            if inner.closed {
                return refuse("the pool is stopping".into());
            }
            if inner.live(&join.member).is_some() || inner.reclaiming.contains(&join.member) {
                return refuse(format!("member name {} is in use", join.member));
            }
        }
        let config = pull::Config {
            durable_name: Some(join.member.clone()),
            filter_subject: self.names.task(&join.member),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            max_ack_pending: i64::from(join.capacity),
            deliver_policy: DeliverPolicy::All,
            max_deliver: -1,
            ..Default::default()
        };
        if let Err(e) = self
            .broker
            .js
            .create_consumer_on_stream(config, self.names.tasks_stream())
            .await
        {
            return refuse(format!(
                "cannot create its consumer: {}",
                broker::error_text(&e)
            ));
        }
        let info = MemberInfo {
            name: join.member.clone(),
            host: join.host.clone(),
            pid: join.pid,
            capacity: join.capacity as usize,
            workers: join.workers as usize,
        };
        // Sticky broadcasts first, stored before any other task for the member: it is routable
        // only once none is left unsent (one set meanwhile is sent in another round).
        let mut sent = HashSet::new();
        loop {
            let todo = {
                let mut inner = self.lock();
                if inner.closed && sent.is_empty() {
                    return refuse("the pool is stopping".into());
                }
                let todo: Vec<(u64, Vec<u8>)> = inner
                    .sticky
                    .iter()
                    .filter(|s| !sent.contains(&s.set))
                    .map(|s| (s.set, s.payload.clone()))
                    .collect();
                if todo.is_empty() {
                    let outstanding = inner
                        .tasks
                        .values()
                        .filter(|p| p.member == info.name)
                        .count();
                    inner.members.push(Live {
                        info: info.clone(),
                        last_seen: Instant::now(),
                        outstanding,
                        limit: self.settings.backlog.unwrap_or(info.capacity),
                    });
                    break;
                }
                todo.into_iter()
                    .map(|(set, payload)| {
                        let (id, handle) = inner.record(info.name.clone(), Route::Member, 0);
                        if let Some(pending) = inner.tasks.get_mut(&id) {
                            pending.tx = None;
                        }
                        drop(handle);
                        (set, id, payload)
                    })
                    .collect::<Vec<_>>()
            };
            for (set, id, payload) in todo {
                sent.insert(set);
                if let Err(e) = self.send_task(id, &info.name, 0, payload).await {
                    self.lose(id, &info.name, format!("the broker did not take it: {e}"));
                }
            }
        }
        tracing::info!(member = %info.name, host = %info.host, capacity = info.capacity, "member joined");
        let _ = self.events.send(MemberEvent::Joined(info));
        self.changed.notify_waiters();
        JoinReply::Welcome {
            ack_wait_ms: Self::ms(self.settings.ack_wait),
            heartbeat_ms: Self::ms(self.settings.heartbeat),
            member_timeout_ms: Self::ms(self.settings.member_timeout()),
            result_credit: u32::try_from(self.settings.result_credit).unwrap_or(u32::MAX),
        }
    }

    /// Member `member` is gone: route nothing more to it, take back what it held.
    fn member_gone(self: &Arc<Self>, member: &str, reason: String) {
        let held = {
            let mut inner = self.lock();
            let Some(k) = inner.live(member) else {
                return;
            };
            inner.members.remove(k);
            if k < inner.cursor {
                inner.cursor -= 1;
            }
            let held = inner.tasks.values().any(|p| p.member == member);
            if held {
                inner.reclaiming.insert(member.into());
            }
            held
        };
        tracing::info!(member, "member left: {reason}");
        let _ = self.events.send(MemberEvent::Left {
            member: member.into(),
            reason: reason.clone(),
        });
        self.changed.notify_waiters();
        let shared = self.clone();
        let member = member.to_string();
        self.spawn(async move {
            if held {
                shared.reclaim(&member, &reason).await;
            }
            let _ = shared
                .broker
                .js
                .delete_consumer_from_stream(&member, shared.names.tasks_stream())
                .await;
            shared.lock().reclaiming.remove(&member);
            shared.changed.notify_waiters();
        });
    }

    /// Takes back from gone member `member`'s consumer every task it held: those it had not
    /// received at once, those it had received once the ack wait ran out. Untargeted tasks go
    /// to the next live member; targeted and broadcast ones are lost with it.
    async fn reclaim(self: &Arc<Self>, member: &str, reason: &str) {
        let held = |shared: &Self| {
            let inner = shared.lock();
            inner.tasks.values().filter(|p| p.member == member).count()
        };
        let s = &self.settings;
        let deadline = Instant::now() + s.ack_wait * 2 + s.member_timeout() + s.broker_timeout;
        let mut consumer = None;
        loop {
            let remaining = held(self);
            if remaining == 0 {
                return;
            }
            if Instant::now() >= deadline {
                let ids: Vec<u64> = {
                    let inner = self.lock();
                    inner
                        .tasks
                        .iter()
                        .filter(|(_, p)| p.member == member)
                        .map(|(id, _)| *id)
                        .collect()
                };
                for id in ids {
                    self.lose(
                        id,
                        member,
                        format!("{reason}; the broker did not give the task back"),
                    );
                }
                return;
            }
            if consumer.is_none() {
                match self
                    .broker
                    .js
                    .get_consumer_from_stream::<pull::Config, _, _>(
                        member,
                        self.names.tasks_stream(),
                    )
                    .await
                {
                    Ok(c) => consumer = Some(c),
                    Err(e) => {
                        tracing::debug!(member, "reclaim: consumer not reachable: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let Some(c) = consumer.as_ref() else { continue };
            let batch = c
                .fetch()
                .max_messages(remaining)
                .expires(Duration::from_millis(500))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(member, "reclaim: fetch failed: {e}");
                    consumer = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            while let Some(message) = batch.next().await {
                match message {
                    Ok(m) => self.reclaimed(member, reason, m).await,
                    Err(e) => tracing::debug!(member, "reclaim: {e}"),
                }
            }
        }
    }

    async fn reclaimed(self: &Arc<Self>, gone: &str, reason: &str, message: JsMessage) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let task: TaskMsg = match wire::decode(&message.payload) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(
                    member = gone,
                    "reclaim: undecodable task message dropped: {e}"
                );
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        // Deliveries to the gone member: all but this one, which came to the parent.
        let prior = task.prior + u32::try_from(delivered.max(1) - 1).unwrap_or(u32::MAX);
        let route = {
            let inner = self.lock();
            match inner.tasks.get(&task.id) {
                Some(p) if p.member == gone => Some(p.route),
                _ => None,
            }
        };
        match route {
            None => {}
            Some(Route::Member) => self.lose(task.id, gone, reason.into()),
            Some(Route::Any) => match self.reroute(task.id, gone, prior).await {
                Some(next) => {
                    tracing::info!(
                        task = task.id,
                        from = gone,
                        to = %next,
                        deliveries = prior,
                        "task redelivered to another member"
                    );
                    if let Err(e) = self.send_task(task.id, &next, prior, task.payload).await {
                        self.lose(task.id, &next, format!("the broker did not take it: {e}"));
                    }
                }
                None => self.lose(
                    task.id,
                    gone,
                    format!("{reason}; no live member was left to take the task"),
                ),
            },
        }
        let _ = message.ack_with(AckKind::Term).await;
    }

    /// Moves task `id` from gone member `gone` to the next live member, waiting up to the
    /// member timeout for one to be there. Returns the member.
    async fn reroute(&self, id: u64, gone: &str, prior: u32) -> Option<String> {
        let deadline = tokio::time::Instant::now() + self.settings.member_timeout();
        loop {
            let mut notified = pin!(self.changed.notified());
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                let inner = &mut *inner;
                if !matches!(inner.tasks.get(&id), Some(p) if p.member == gone) {
                    return None;
                }
                if !inner.members.is_empty() {
                    let k = inner.cursor % inner.members.len();
                    inner.cursor = k + 1;
                    let live = &mut inner.members[k];
                    live.outstanding += 1;
                    let name = live.info.name.clone();
                    let p = inner.tasks.get_mut(&id).expect("checked above");
                    p.member = name.clone();
                    lock(&p.status).deliveries = prior;
                    return Some(name);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    fn on_end(&self, member: &str, end: EndMsg) {
        let mut inner = self.lock();
        let Some(p) = inner.tasks.get_mut(&end.id) else {
            tracing::debug!(
                member,
                task = end.id,
                "end of a task already ended (a rerun)"
            );
            return;
        };
        if p.seen_from(member) < end.outputs {
            p.parked = Some((member.into(), end));
            return;
        }
        let result = outcome(member, end.outcome);
        inner.finish(end.id, member, end.deliveries, result);
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Counts an output of task `id` from `member` (one that could not be delivered
    /// included), ending the task if its end was waiting for it.
    fn on_output(&self, member: &str, id: u64, dropped: Option<&String>) {
        let mut inner = self.lock();
        let Some(p) = inner.tasks.get_mut(&id) else {
            return;
        };
        if let Some(e) = dropped {
            p.dropped.get_or_insert_with(|| e.clone());
        }
        match p.seen.iter_mut().find(|(m, _)| m == member) {
            Some((_, n)) => *n += 1,
            None => p.seen.push((member.into(), 1)),
        }
        let ready =
            matches!(&p.parked, Some((m, end)) if m == member && p.seen_from(m) >= end.outputs);
        if ready {
            let (m, end) = p.parked.take().expect("checked above");
            let result = outcome(&m, end.outcome);
            inner.finish(id, &m, end.deliveries, result);
            drop(inner);
            self.changed.notify_waiters();
        }
    }
}

fn outcome(member: &str, outcome: wire::Outcome) -> Result<(), TaskError> {
    match outcome {
        wire::Outcome::Done => Ok(()),
        wire::Outcome::Failed(message) => Err(TaskError::Failed { message }),
        wire::Outcome::Panicked(message) => Err(TaskError::Panicked { message }),
        wire::Outcome::TimedOut(ms) => Err(TaskError::TimedOut {
            after: Duration::from_millis(ms),
        }),
        wire::Outcome::Lost(reason) => Err(TaskError::Lost {
            member: member.into(),
            reason,
        }),
    }
}

struct Subscriptions {
    join: async_nats::Subscriber,
    alive: async_nats::Subscriber,
    leave: async_nats::Subscriber,
}

impl Subscriptions {
    async fn open<O>(shared: &Shared<O>) -> Result<Self, Error> {
        let client = &shared.broker.client;
        let sub = |subject: String| async move {
            client
                .subscribe(subject.clone())
                .await
                .map_err(|e| Error::Broker(format!("cannot subscribe to {subject}: {e}")))
        };
        Ok(Self {
            join: sub(shared.names.join()).await?,
            alive: sub(shared.names.alive("*")).await?,
            leave: sub(shared.names.leave("*")).await?,
        })
    }
}

type Messages = pull::Stream;

async fn consumer_messages<O>(shared: &Shared<O>, stream: &str) -> Result<Messages, Error> {
    let fail = |e: &dyn std::error::Error| {
        Error::Broker(format!(
            "cannot read stream {stream}: {}",
            broker::error_text(e)
        ))
    };
    let consumer = shared
        .broker
        .js
        .create_consumer_on_stream(
            pull::Config {
                durable_name: Some("parent".into()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: shared.settings.ack_wait,
                max_ack_pending: -1,
                ..Default::default()
            },
            stream,
        )
        .await
        .map_err(|e| fail(&e))?;
    consumer
        .stream()
        .heartbeat(Duration::from_secs(1))
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| fail(&e))
}

async fn serve_joins<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut joins: async_nats::Subscriber,
) {
    while let Some(message) = joins.next().await {
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        let answer = match wire::decode::<Join>(&message.payload) {
            Ok(join) => shared.on_join(join).await,
            Err(e) => JoinReply::Refused {
                reason: format!("undecodable join request (another looppool version?): {e}"),
            },
        };
        if let Ok(bytes) = wire::encode(&answer) {
            let _ = shared.broker.client.publish(reply, bytes.into()).await;
        }
    }
}

async fn serve_members<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut alive: async_nats::Subscriber,
    mut leave: async_nats::Subscriber,
) {
    loop {
        tokio::select! {
            Some(m) = alive.next() => {
                let member = Names::member_of(&m.subject);
                let known = {
                    let mut inner = shared.lock();
                    match inner.live(member) {
                        Some(k) => {
                            inner.members[k].last_seen = Instant::now();
                            true
                        }
                        None => false,
                    }
                };
                if !known && !shared.lock().closed {
                    let reason = "the pool does not count it in (it went silent, or the \
                                  pool restarted)".to_string();
                    shared.control(member, &Control::Evicted { reason }).await;
                }
            }
            Some(m) = leave.next() => {
                let member = Names::member_of(&m.subject).to_string();
                let reason = wire::decode::<Leave>(&m.payload)
                    .map(|l| l.reason)
                    .unwrap_or_else(|e| format!("left (undecodable reason: {e})"));
                shared.member_gone(&member, reason);
            }
            else => return,
        }
    }
}

/// The parent's heartbeat, and the check for silent members.
async fn tick<O: DeserializeOwned + Send + 'static>(shared: Arc<Shared<O>>) {
    let mut every = tokio::time::interval(shared.settings.heartbeat);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = shared.settings.member_timeout();
    loop {
        every.tick().await;
        let _ = shared
            .broker
            .client
            .publish(shared.names.beacon(), bytes::Bytes::new())
            .await;
        // Repeat each member's credit, in case one was lost.
        let members: Vec<String> = {
            let inner = shared.lock();
            inner.members.iter().map(|m| m.info.name.clone()).collect()
        };
        for member in members {
            shared.grant(&member).await;
        }
        let conn = &shared.broker.conn;
        if !conn.is_up() {
            continue;
        }
        // Silence while the parent itself was cut off does not count against members.
        let since = conn.since();
        let now = Instant::now();
        let silent: Vec<(String, Duration)> = {
            let inner = shared.lock();
            inner
                .members
                .iter()
                .filter_map(|m| {
                    let quiet = now.duration_since(m.last_seen.max(since));
                    (quiet > timeout).then(|| (m.info.name.clone(), quiet))
                })
                .collect()
        };
        for (member, quiet) in silent {
            shared.member_gone(&member, format!("silent for {quiet:.1?}"));
        }
    }
}

async fn read_ends<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut messages: Messages,
) {
    let stream = shared.names.end_stream();
    loop {
        match messages.next().await {
            Some(Ok(m)) => {
                let member = Names::member_of(&m.subject).to_string();
                match wire::decode::<EndMsg>(&m.payload) {
                    Ok(end) => shared.on_end(&member, end),
                    Err(e) => tracing::error!(member, "undecodable task end dropped: {e}"),
                }
                let _ = m.ack().await;
            }
            Some(Err(e)) => {
                tracing::debug!("reading {stream}: {}", broker::error_text(&e));
            }
            None => match reopen(&shared, &stream).await {
                Some(m) => messages = m,
                None => return,
            },
        }
    }
}

async fn read_outputs<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut messages: Messages,
) {
    let stream = shared.names.out_stream();
    loop {
        match messages.next().await {
            Some(Ok(m)) => {
                let member = Names::member_of(&m.subject).to_string();
                if m.info().is_ok_and(|i| i.delivered > 1) {
                    // Handed out before and not yet acknowledged (the program still holds it,
                    // or the acknowledgement was lost): never hand it out twice.
                    let _ = m.ack().await;
                    continue;
                }
                let output = match wire::decode::<OutputMsg>(&m.payload) {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::error!(member, "undecodable output message dropped: {e}");
                        let _ = shared.acks.send((member, m));
                        continue;
                    }
                };
                let task = output.task;
                let value = output.payload.and_then(|p| {
                    wire::decode::<O>(&p).map_err(|e| format!("cannot decode it: {e}"))
                });
                if let Some(id) = task {
                    shared.on_output(&member, id, value.as_ref().err());
                }
                match value {
                    Ok(value) => {
                        let delivery = Delivery {
                            member,
                            task,
                            value: Some(value),
                            message: Some(m),
                            acks: shared.acks.clone(),
                        };
                        let _ = shared.outputs_tx.send(delivery).await;
                    }
                    Err(e) => {
                        tracing::error!(member, task, "an output was dropped: {e}");
                        let _ = shared.acks.send((member, m));
                    }
                }
            }
            Some(Err(e)) => tracing::debug!("reading {stream}: {}", broker::error_text(&e)),
            None => match reopen(&shared, &stream).await {
                Some(m) => messages = m,
                None => return,
            },
        }
    }
}

/// Opens a consumer's message stream again after it ended, retrying while the broker is away.
async fn reopen<O>(shared: &Shared<O>, stream: &str) -> Option<Messages> {
    loop {
        match consumer_messages(shared, stream).await {
            Ok(m) => return Some(m),
            Err(e) => {
                tracing::warn!("{e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Acknowledges outputs to the broker as the program drops them, and tells each member how
/// many of its outputs were acknowledged. An acknowledgement goes out before the count that
/// includes it, on the same connection, so the broker has removed the output by the time the
/// member stores another in its place.
async fn send_acks<O: DeserializeOwned + Send + 'static>(
    shared: Arc<Shared<O>>,
    mut acks: mpsc::UnboundedReceiver<(String, JsMessage)>,
) {
    let mut batch = Vec::new();
    while acks.recv_many(&mut batch, 256).await > 0 {
        let mut members: Vec<String> = Vec::new();
        for (member, m) in batch.drain(..) {
            if let Err(e) = m.ack().await {
                tracing::debug!("output ack failed: {e}");
            }
            *lock(&shared.acked).entry(member.clone()).or_default() += 1;
            if !members.contains(&member) {
                members.push(member);
            }
        }
        for member in members {
            shared.grant(&member).await;
        }
    }
}
