//! A member: a host's share of a pool, running the same `Worker` in a local pool of worker
//! processes and taking its tasks from its own JetStream consumer.

use crate::broker::{self, Broker, PublishFailure};
use crate::error::Error;
use crate::seal::{self, Refusals, Sealer, Secret, Unsealed};
use crate::wire::{
    self, Alive, Beacon, Control, Credit, CtlMsg, EndMsg, Join, JoinReply, Leave, Names, Outcome,
    OutputMsg, TaskMsg,
};
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::{AckKind, Message as JsMessage};
use futures_util::{FutureExt, StreamExt};
use looppool_core::{Builder as LocalBuilder, Pool as LocalPool, TaskId, Worker};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};

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
    /// Outputs the broker refused at first because this member's stored outputs were at the
    /// result credit, and were stored later. The member's own count of its credit prevents
    /// that; more than 0 means the count and the broker disagreed (after a broker restart,
    /// say). The broker's limit kept the credit all the same.
    pub outputs_refused: u64,
    /// Messages this member refused: tasks, controls, credit or beacons not sealed with the
    /// pool's secret, repeated, or from another run of the parent.
    pub refused: u64,
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

    /// How to connect to the server: credentials, TLS, timeouts (the connection's name and
    /// event callback are the member's own).
    pub fn connect_options(mut self, options: async_nats::ConnectOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// Runs until the pool stops or the parent goes silent.
    pub async fn run(self) -> Result<Left, Error> {
        self.run_until(std::future::pending()).await
    }

    /// Runs until the pool stops, the parent goes silent, or `shutdown` completes (a signal,
    /// say). On shutdown the member takes no more tasks, finishes those its workers run,
    /// reports them, and leaves; the tasks waiting in its consumer go to other members.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<Left, Error> {
        let member = self.name.clone().unwrap_or_else(default_name);
        if !wire::valid_name(&self.pool) || !wire::valid_name(&member) {
            return Err(Error::Config(format!(
                "pool {:?} and member {:?}: names must be 1 to 64 ASCII letters, digits, '-' \
                 or '_'",
                self.pool, member
            )));
        }
        let sealer = Sealer::new(&match self.secret {
            Some(s) => s,
            None => Secret::from_env()?,
        });
        let names = Names::new(&self.pool);
        let broker = Broker::connect(
            &self.server,
            &format!("looppool {} member {member}", self.pool),
            self.options.clone(),
        )
        .await?;
        let local = self
            .local
            .name(format!("{}-{member}", self.pool))
            .start()
            .await
            .map_err(|e| Error::Local(e.to_string()))?;
        let mut shutdown = pin!(shutdown.fuse());
        let join = Join {
            version: wire::VERSION,
            worker: W::name().into(),
            member: member.clone(),
            host: host_name(),
            pid: std::process::id(),
            capacity: u32::try_from(local.size() * local.capacity()).unwrap_or(u32::MAX),
            workers: u32::try_from(local.size()).unwrap_or(u32::MAX),
            nonce: seal::random_u64(),
        };
        let welcome = tokio::select! {
            w = join_pool(&broker, &names, &sealer, &join) => Some(w),
            () = &mut shutdown => None,
        };
        let settings = match welcome {
            Some(Ok(w)) => w,
            Some(Err(e)) => {
                local.stop().await;
                return Err(e);
            }
            None => {
                // The parent may have counted this member in already: say it leaves, so that
                // tasks sent to it go elsewhere at once.
                let reason = "shut down before the pool's parent answered".to_string();
                let leave = Leave {
                    nonce: join.nonce,
                    reason: reason.clone(),
                };
                let subject = names.leave(&member);
                if let Ok(bytes) = sealer.pack(&subject, &leave) {
                    let _ = broker.client.publish(subject, bytes.into()).await;
                    let _ = tokio::time::timeout(FLUSH, broker.client.flush()).await;
                }
                local.stop().await;
                return Ok(Left {
                    member,
                    reason,
                    tasks: 0,
                    outputs_refused: 0,
                    refused: 0,
                });
            }
        };
        tracing::info!(pool = %self.pool, member = %member, capacity = join.capacity, "joined the pool");
        let serving = Serving {
            names,
            member,
            nonce: join.nonce,
            parent: settings.run,
            sealer,
            refusals: Refusals::default(),
            broker,
            local: Arc::new(local),
            running: Mutex::new(HashMap::new()),
            ids: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            ended: std::sync::atomic::AtomicU64::new(0),
            refused: std::sync::atomic::AtomicU64::new(0),
            run: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| format!("{:x}", d.as_nanos()))
                .unwrap_or_default(),
        };
        let serving = Arc::new(serving);
        let result = serving
            .serve(shutdown, settings, join.capacity as usize)
            .await;
        serving.local.stop().await;
        result
    }
}

/// What the parent told a member when it joined.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// The parent's run.
    run: u64,
    ack_wait: Duration,
    heartbeat: Duration,
    member_timeout: Duration,
    broker_timeout: Duration,
    result_credit: u64,
}

/// Asks to join until the parent answers.
async fn join_pool(
    broker: &Broker,
    names: &Names,
    sealer: &Sealer,
    join: &Join,
) -> Result<Settings, Error> {
    let request = sealer.pack(&names.join(), join).map_err(Error::Config)?;
    let reply_context = Names::join_reply(&names.join(), join.nonce);
    let mut told: Option<Instant> = None;
    loop {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            broker.client.request(names.join(), request.clone().into()),
        )
        .await;
        match answer {
            Ok(Ok(reply)) => match sealer.unpack::<JoinReply>(&reply_context, &reply.payload) {
                Ok(JoinReply::Welcome {
                    run,
                    ack_wait_ms,
                    heartbeat_ms,
                    member_timeout_ms,
                    broker_timeout_ms,
                    result_credit,
                }) => {
                    return Ok(Settings {
                        run,
                        ack_wait: Duration::from_millis(ack_wait_ms),
                        heartbeat: Duration::from_millis(heartbeat_ms),
                        member_timeout: Duration::from_millis(member_timeout_ms),
                        broker_timeout: Duration::from_millis(broker_timeout_ms),
                        result_credit: u64::from(result_credit.max(1)),
                    })
                }
                Ok(JoinReply::Refused { reason }) => return Err(Error::Refused(reason)),
                Err(Unsealed::Forged) => {
                    // The parent answers a join it cannot open unsealed: it may hold another
                    // secret. Anything else is not from the parent.
                    return Err(Error::Refused(
                        match wire::decode::<JoinReply>(&reply.payload) {
                            Ok(JoinReply::Refused { reason }) => format!(
                                "{reason} (an answer not sealed with this member's secret: do \
                                 the parent and this member hold the same one?)"
                            ),
                            _ => "the answer to the join request is not sealed with this \
                                  member's secret"
                                .into(),
                        },
                    ));
                }
                Err(e) => {
                    return Err(Error::Refused(format!(
                        "undecodable answer from the pool's parent (another looppool version?): {e}"
                    )))
                }
            },
            Ok(Err(_)) | Err(_) => {
                if told.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    tracing::info!("waiting for the parent of pool {} to answer", names.pool());
                    told = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
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

/// A task's run ended in the local pool.
struct Finished {
    local: Option<TaskId>,
    id: u64,
    deliveries: u32,
    outcome: Outcome,
}

/// What goes out on the end lane.
struct EndOut {
    end: EndMsg,
}

struct Serving<W: Worker> {
    names: Names,
    member: String,
    /// This run of the member (its join's nonce).
    nonce: u64,
    /// The parent's run.
    parent: u64,
    sealer: Sealer,
    refusals: Refusals,
    broker: Broker,
    local: Arc<LocalPool<W>>,
    /// Tasks in the local pool, by parent id, with their JetStream message.
    running: Mutex<HashMap<u64, JsMessage>>,
    /// Local task id to parent id.
    ids: Mutex<HashMap<TaskId, u64>>,
    /// Notified when `running` or `ids` change.
    changed: Notify,
    ended: std::sync::atomic::AtomicU64,
    /// Outputs the broker refused for the per-subject limit.
    refused: std::sync::atomic::AtomicU64,
    run: String,
}

/// How long a member waits for its last messages to reach the broker when it leaves.
const FLUSH: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<W: Worker> Serving<W> {
    async fn serve(
        self: &Arc<Self>,
        mut shutdown: std::pin::Pin<&mut futures_util::future::Fuse<impl Future<Output = ()>>>,
        settings: Settings,
        capacity: usize,
    ) -> Result<Left, Error> {
        let Settings {
            ack_wait,
            heartbeat,
            member_timeout,
            broker_timeout,
            result_credit,
            ..
        } = settings;
        let client = &self.broker.client;
        let mut ctl = self.broker.subscribe(self.names.ctl(&self.member)).await?;
        let mut beacon = self.broker.subscribe(self.names.beacon()).await?;
        let mut credit = self
            .broker
            .subscribe(self.names.credit(&self.member))
            .await?;
        let (granted_tx, granted) = watch::channel(0u64);
        let mut messages = self.messages(capacity).await?;

        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (end_tx, end_rx) = mpsc::unbounded_channel();
        let mut background = tokio::task::JoinSet::new();
        let pump = tokio::spawn(self.clone().pump(finished_rx, out_tx, end_tx));
        let lanes = {
            let me = self.clone();
            let outputs = tokio::spawn(me.clone().output_lane(out_rx, result_credit, granted));
            let ends = tokio::spawn(me.end_lane(end_rx));
            (outputs, ends)
        };
        background.spawn(self.clone().heartbeat(heartbeat));
        background.spawn(self.clone().progress(ack_wait));
        let me = self.clone();
        background.spawn(async move {
            while let Some(m) = credit.next().await {
                match me.sealer.unpack::<Credit>(&m.subject, &m.payload) {
                    Ok(c) if c.run == me.parent => {
                        granted_tx.send_if_modified(|g| {
                            let more = c.acked > *g;
                            *g = (*g).max(c.acked);
                            more
                        });
                    }
                    Ok(_) => me
                        .refusals
                        .refuse(format_args!("credit from another parent")),
                    Err(e) => me.refusals.refuse(format_args!("a credit message: {e}")),
                }
            }
        });

        let last_beacon = Arc::new(Mutex::new(Instant::now()));
        {
            let last_beacon = last_beacon.clone();
            let me = self.clone();
            background.spawn(async move {
                let mut seq = 0;
                while let Some(m) = beacon.next().await {
                    match me.sealer.unpack::<Beacon>(&m.subject, &m.payload) {
                        Ok(b) if b.run == me.parent && b.seq > seq => {
                            seq = b.seq;
                            *lock(&last_beacon) = Instant::now();
                        }
                        Ok(_) => me
                            .refusals
                            .refuse(format_args!("a beacon repeated or of another parent")),
                        Err(e) => me.refusals.refuse(format_args!("a beacon: {e}")),
                    }
                }
            });
        }
        // How long the parent has been silent, once that is past the member timeout (silence
        // while this member was cut off from the broker does not count).
        let conn = self.broker.conn.clone();
        // Or, cut off from the broker past the broker timeout, why it gives up on the pool.
        let parent_silent = move || {
            let now = Instant::now();
            let quiet = now.duration_since((*lock(&last_beacon)).max(conn.since()));
            if conn.is_up() {
                (quiet > member_timeout)
                    .then(|| format!("the pool's parent was silent for {quiet:.1?}"))
            } else {
                let cut_off = now.duration_since(conn.since());
                (cut_off > broker_timeout)
                    .then(|| format!("the broker was unreachable for {cut_off:.1?}"))
            }
        };
        let mut check = tokio::time::interval(heartbeat);
        let mut evicted = None;
        let reason = loop {
            tokio::select! {
                () = &mut shutdown => break "shut down".to_string(),
                Some(m) = ctl.next() => match self.sealer.unpack::<CtlMsg>(&m.subject, &m.payload) {
                    Ok(c) if c.run != self.parent || c.nonce != self.nonce => self
                        .refusals
                        .refuse(format_args!("a control message for another run")),
                    Ok(CtlMsg { control: Control::Stop, .. }) => {
                        break "the pool stopped".to_string()
                    }
                    Ok(CtlMsg { control: Control::Evicted { reason }, .. }) => {
                        evicted = Some(reason.clone());
                        break format!("evicted: {reason}");
                    }
                    Err(e) => self.refusals.refuse(format_args!("a control message: {e}")),
                },
                _ = check.tick() => {
                    if let Some(why) = parent_silent() {
                        break why;
                    }
                }
                next = messages.next() => match next {
                    Some(Ok(m)) => self.take(m, &finished_tx).await,
                    Some(Err(e)) => tracing::debug!("reading tasks: {}", broker::error_text(&e)),
                    None => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        match self.messages(capacity).await {
                            Ok(m) => messages = m,
                            Err(e) => tracing::warn!("{e}; retrying"),
                        }
                    }
                },
            }
        };
        // Take no more. Tasks already delivered but not yet taken go back at once, for the
        // parent to hand to other members.
        while let Some(Some(Ok(m))) = messages.next().now_or_never() {
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
        drop(messages);
        tracing::info!(member = %self.member, "leaving: {reason}");
        let (outputs, ends) = lanes;
        let aborts = [
            pump.abort_handle(),
            outputs.abort_handle(),
            ends.abort_handle(),
        ];
        // Finish and report what the workers hold; the lanes close once they sent it.
        // Heartbeats and credit go on meanwhile (outputs may wait for the parent's program to
        // read them). Not for a parent that is gone: nobody would take the reports.
        let drain = async {
            loop {
                let mut notified = pin!(self.changed.notified());
                notified.as_mut().enable();
                if lock(&self.running).is_empty() {
                    break;
                }
                notified.await;
            }
            drop(finished_tx);
            pump.abort();
            let _ = ends.await;
            let _ = outputs.await;
        };
        let parent_gone = async {
            while parent_silent().is_none() {
                check.tick().await;
            }
        };
        let abandoned = evicted.is_some()
            || tokio::select! {
                () = drain => false,
                () = parent_gone => true,
            };
        if abandoned {
            // Nobody takes the reports: the workers stop now rather than finish.
            let left = lock(&self.running).len();
            tracing::warn!("the pool is out of reach; {left} tasks left unreported");
            self.local.kill();
        }
        for task in aborts {
            task.abort();
        }
        background.abort_all();
        let leave = Leave {
            nonce: self.nonce,
            reason: reason.clone(),
        };
        let subject = self.names.leave(&self.member);
        if let Ok(bytes) = self.sealer.pack(&subject, &leave) {
            let _ = client.publish(subject, bytes.into()).await;
            let _ = tokio::time::timeout(FLUSH, client.flush()).await;
        }
        if let Some(reason) = evicted {
            return Err(Error::Evicted(reason));
        }
        Ok(Left {
            member: self.member.clone(),
            reason,
            tasks: self.ended.load(std::sync::atomic::Ordering::Relaxed),
            outputs_refused: self.refused.load(std::sync::atomic::Ordering::Relaxed),
            refused: self.refusals.count(),
        })
    }

    async fn messages(&self, capacity: usize) -> Result<pull::Stream, Error> {
        let fail = |e: &dyn std::error::Error| {
            Error::Broker(format!(
                "cannot read this member's consumer: {}",
                broker::error_text(e)
            ))
        };
        let consumer = self
            .broker
            .js
            .get_consumer_from_stream::<pull::Config, _, _>(&self.member, self.names.tasks_stream())
            .await
            .map_err(|e| fail(&e))?;
        broker::read(&consumer, Some(capacity), "this member's consumer").await
    }

    /// Starts one delivered task in the local pool.
    async fn take(
        self: &Arc<Self>,
        message: JsMessage,
        finished: &mpsc::UnboundedSender<Finished>,
    ) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let task = match self
            .sealer
            .unpack::<TaskMsg>(&message.subject, &message.payload)
        {
            Ok(t) if t.run == self.parent => t,
            Ok(t) => {
                self.refusals
                    .refuse(format_args!("task {} of another parent", t.id));
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
            Err(e) => {
                self.refusals.refuse(format_args!("a task: {e}"));
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let deliveries = task
            .prior
            .saturating_add(u32::try_from(delivered).unwrap_or(u32::MAX));
        {
            let mut running = lock(&self.running);
            if running.contains_key(&task.id) {
                // Redelivered while it runs here: the run under way acknowledges it.
                return;
            }
            running.insert(task.id, message);
        }
        let id = task.id;
        let fail = |outcome: Outcome| {
            let _ = finished.send(Finished {
                local: None,
                id,
                deliveries,
                outcome,
            });
        };
        let value: W::Task = match wire::decode(&task.payload) {
            Ok(v) => v,
            Err(e) => return fail(Outcome::Failed(format!("cannot decode the task: {e}"))),
        };
        let handle = match self.local.submit(value).await {
            Ok(h) => h,
            Err(e) => {
                return fail(Outcome::Lost(format!(
                    "the member's workers did not take it: {e}"
                )))
            }
        };
        let local = handle.id();
        lock(&self.ids).insert(local, id);
        self.changed.notify_waiters();
        let finished = finished.clone();
        tokio::spawn(async move {
            let outcome = match handle.await {
                Ok(()) => Outcome::Done,
                Err(e) => local_outcome(e),
            };
            let _ = finished.send(Finished {
                local: Some(local),
                id,
                deliveries,
                outcome,
            });
        });
    }

    /// Orders outputs and ends: every output of a task goes on the output lane before the
    /// task's end goes on the end lane, which carries the count of its outputs.
    async fn pump(
        self: Arc<Self>,
        mut finished: mpsc::UnboundedReceiver<Finished>,
        out_lane: mpsc::UnboundedSender<(Option<u64>, looppool_core::Delivery<W::Output>)>,
        end_lane: mpsc::UnboundedSender<(EndOut, Option<JsMessage>)>,
    ) {
        let outputs = self.local.outputs();
        let mut counts: HashMap<u64, u32> = HashMap::new();
        loop {
            tokio::select! {
                biased;
                d = outputs.recv() => match d {
                    Some(d) => self.forward(d, &mut counts, &out_lane).await,
                    None => return,
                },
                f = finished.recv() => {
                    let Some(f) = f else { return };
                    // Outputs of the task reached the local stream before its end.
                    while let Some(d) = outputs.try_recv() {
                        self.forward(d, &mut counts, &out_lane).await;
                    }
                    if let Some(local) = f.local {
                        lock(&self.ids).remove(&local);
                    }
                    let message = lock(&self.running).get(&f.id).cloned();
                    let end = EndMsg {
                        nonce: self.nonce,
                        id: f.id,
                        deliveries: f.deliveries,
                        outputs: counts.remove(&f.id).unwrap_or(0),
                        outcome: f.outcome,
                    };
                    let _ = end_lane.send((EndOut { end }, message));
                }
            }
        }
    }

    async fn forward(
        &self,
        delivery: looppool_core::Delivery<W::Output>,
        counts: &mut HashMap<u64, u32>,
        out_lane: &mpsc::UnboundedSender<(Option<u64>, looppool_core::Delivery<W::Output>)>,
    ) {
        let id = match delivery.task_id() {
            None => None,
            Some(local) => loop {
                // The id is recorded right after the local submission returns.
                let mut notified = pin!(self.changed.notified());
                notified.as_mut().enable();
                if let Some(id) = lock(&self.ids).get(&local) {
                    break Some(*id);
                }
                notified.await;
            },
        };
        if let Some(id) = id {
            *counts.entry(id).or_default() += 1;
        }
        let _ = out_lane.send((id, delivery));
    }

    /// Stores outputs in order, as many at once as the result credit allows; an output is
    /// acknowledged to the local worker (returning its local credit) once the broker stored it.
    async fn output_lane(
        self: Arc<Self>,
        mut lane: mpsc::UnboundedReceiver<(Option<u64>, looppool_core::Delivery<W::Output>)>,
        credit: u64,
        mut granted: watch::Receiver<u64>,
    ) {
        let subject = self.names.out(&self.member);
        let mut seq = 0u64;
        let mut storing = futures_util::stream::FuturesOrdered::new();
        let mut open = true;
        while open || !storing.is_empty() {
            let room = seq.saturating_sub(*granted.borrow()) < credit;
            tokio::select! {
                biased;
                Some(()) = storing.next(), if !storing.is_empty() => {}
                next = lane.recv(), if open && room => match next {
                    Some((task, delivery)) => {
                        seq += 1;
                        let msg_id = format!("{}-{}-o{seq}", self.member, self.run);
                        let payload = wire::encode(delivery.value())
                            .map_err(|e| format!("cannot encode it: {e}"));
                        let output = OutputMsg { nonce: self.nonce, seq, task, payload };
                        // Sent here, in order; confirmed below, several at a time.
                        let sent = match self.sealer.pack(&subject, &output) {
                            Ok(msg) => broker::send(&self.broker.js, &subject, &msg_id, &msg).await.ok(),
                            Err(_) => None,
                        };
                        storing.push_back(self.clone().confirm_output(msg_id, output, sent, delivery));
                    }
                    None => open = false,
                },
                changed = granted.changed(), if open && !room => {
                    if changed.is_err() {
                        // The serving loop ended: no more credit will come.
                        open = false;
                    }
                }
                else => break,
            }
        }
    }

    /// Waits until the broker stored an output sent by the lane; failing that, stores it
    /// again (the message id drops a second copy), or in its place a note saying why it
    /// cannot be (too large for the broker, most likely), so that the task's end does not
    /// wait for it and the parent reports it.
    async fn confirm_output(
        self: Arc<Self>,
        msg_id: String,
        mut output: OutputMsg,
        sent: Option<broker::AckFuture>,
        delivery: looppool_core::Delivery<W::Output>,
    ) {
        if let Some(ack) = sent {
            match ack.await {
                Ok(_) => return,
                Err(e) if broker::subject_full(&e) => {
                    self.refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(_) => {}
            }
        }
        let subject = self.names.out(&self.member);
        let task = output.task;
        let size = output.payload.as_ref().map_or(0, Vec::len);
        while let Ok(msg) = self.sealer.pack(&subject, &output) {
            match broker::publish(&self.broker.js, &subject, &msg_id, &msg, None).await {
                Ok(()) | Err(PublishFailure::NoStream) => break,
                Err(e) if output.payload.is_ok() => {
                    tracing::error!(task, "output of {size} bytes not sent: {e}");
                    output.payload = Err(format!("the broker refused {size} bytes: {e}"));
                }
                Err(e) => {
                    tracing::error!(task, "output not sent: {e}");
                    break;
                }
            }
        }
        drop(delivery);
    }

    async fn end_lane(
        self: Arc<Self>,
        mut lane: mpsc::UnboundedReceiver<(EndOut, Option<JsMessage>)>,
    ) {
        // Ends need no order among themselves (the parent matches each to its task and its
        // output count), so they go out concurrently.
        let mut sending = futures_util::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                next = lane.recv() => match next {
                    Some((EndOut { end }, message)) => sending.push(self.send_end(end, message)),
                    None => break,
                },
                Some(()) = sending.next(), if !sending.is_empty() => {}
            }
        }
        while sending.next().await.is_some() {}
    }

    /// Publishes one task end, then acknowledges the task to JetStream.
    async fn send_end(&self, end: EndMsg, message: Option<JsMessage>) {
        let id = end.id;
        let msg_id = format!("{}-{}-e{id}-{}", self.member, self.run, end.deliveries);
        let subject = self.names.end(&self.member);
        let sent = match self.sealer.pack(&subject, &end) {
            Ok(bytes) => broker::publish(&self.broker.js, &subject, &msg_id, &bytes, None).await,
            Err(e) => Err(PublishFailure::Refused(e)),
        };
        if let Err(e) = &sent {
            tracing::error!(task = id, "task end not sent: {e}");
        }
        if let Some(m) = message {
            // Done: the work queue drops it. Should the ack be lost, the task comes back after
            // the ack wait, runs again, and the parent ignores the second end.
            if m.double_ack().await.is_err() {
                let _ = m.ack().await;
            }
        }
        lock(&self.running).remove(&id);
        self.ended
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    async fn heartbeat(self: Arc<Self>, every: Duration) {
        let subject = self.names.alive(&self.member);
        let mut tick = tokio::time::interval(every);
        let mut seq = 0;
        loop {
            tick.tick().await;
            seq += 1;
            let alive = Alive {
                nonce: self.nonce,
                seq,
            };
            if let Ok(bytes) = self.sealer.pack(&subject, &alive) {
                let _ = self
                    .broker
                    .client
                    .publish(subject.clone(), bytes.into())
                    .await;
            }
        }
    }

    /// Tells JetStream the running tasks are in progress, so their ack wait starts over.
    async fn progress(self: Arc<Self>, ack_wait: Duration) {
        let mut tick = tokio::time::interval((ack_wait / 3).max(Duration::from_millis(30)));
        loop {
            tick.tick().await;
            let messages: Vec<JsMessage> = lock(&self.running).values().cloned().collect();
            for m in messages {
                let _ = m.ack_with(AckKind::Progress).await;
            }
        }
    }
}

/// A local task's end as the broker carries it: a worker's error as its text.
fn local_outcome<F: std::fmt::Display>(error: looppool_core::TaskError<F>) -> Outcome {
    use looppool_core::TaskError as E;
    match error {
        E::Failed(failure) => Outcome::Failed(failure.to_string()),
        E::Panicked { message } => Outcome::Panicked(message),
        E::TimedOut { after } => Outcome::TimedOut(after.as_millis() as u64),
        lost @ E::Lost { .. } => Outcome::Lost(lost.to_string()),
        other => Outcome::Failed(other.to_string()),
    }
}
