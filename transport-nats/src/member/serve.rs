//! A member at work: the loop that takes its tasks and answers its parent, until it leaves.

use super::{Left, Settings};
use crate::broker::{self, Broker};
use crate::error::Error;
use crate::seal::{Refusals, Sealer};
use crate::wire::{Beacon, Control, Credit, CtlMsg, Leave, Names, Outcome, TaskMsg};
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::{AckKind, Message as JsMessage};
use futures_util::{FutureExt, StreamExt};
use looppool_core::{Pool as LocalPool, TaskId, Worker};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};

/// A task's run ended in the local pool.
pub(super) struct Finished {
    pub(super) local: Option<TaskId>,
    pub(super) id: u64,
    pub(super) deliveries: u32,
    /// The local worker that ran it (0 if none did).
    pub(super) worker: u32,
    pub(super) outcome: Outcome,
}

/// What the parent last said it has of this run: see [`Credit`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Heard {
    pub(super) acked: u64,
    pub(super) received: u64,
}

pub(super) struct Serving<W: Worker> {
    pub(super) names: Names,
    pub(super) member: String,
    /// This run of the member (its join's nonce).
    pub(super) nonce: u64,
    /// The parent's run.
    pub(super) parent: u64,
    pub(super) sealer: Sealer,
    pub(super) refusals: Refusals,
    pub(super) broker: Broker,
    pub(super) local: Arc<LocalPool<W>>,
    /// Tasks in the local pool, by parent id, with their JetStream message.
    pub(super) running: Mutex<HashMap<u64, JsMessage>>,
    /// Local task id to parent id.
    pub(super) ids: Mutex<HashMap<TaskId, u64>>,
    /// Notified when `running` or `ids` change.
    pub(super) changed: Notify,
    pub(super) ended: std::sync::atomic::AtomicU64,
    /// Messages sent to the parent again because it did not confirm them in time.
    pub(super) resent: std::sync::atomic::AtomicU64,
    /// Tasks this run took.
    pub(super) taken: Mutex<TakenTasks>,
    /// Tasks the parent cancelled, or may.
    pub(super) cancels: Mutex<super::cancel::Cancels>,
}

/// The tasks a run of the member took, each by its stream sequence: a task stored again
/// (another message with the same id and deliveries, a replay) is not run twice.
#[derive(Debug, Default)]
pub(super) struct TakenTasks {
    order: VecDeque<(u64, u32)>,
    seqs: HashMap<(u64, u32), u64>,
}

/// What [`TakenTasks::record`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Taken {
    First,
    /// The same message again: JetStream redelivered it.
    Redelivered,
    /// Another message with the same task: a copy.
    Copy,
}

impl TakenTasks {
    const KEPT: usize = 100_000;

    pub(super) fn record(&mut self, task: (u64, u32), seq: u64) -> Taken {
        match self.seqs.get(&task) {
            Some(&first) if first == seq => Taken::Redelivered,
            Some(_) => Taken::Copy,
            None => {
                self.seqs.insert(task, seq);
                self.order.push_back(task);
                if self.order.len() > Self::KEPT {
                    if let Some(old) = self.order.pop_front() {
                        self.seqs.remove(&old);
                    }
                }
                Taken::First
            }
        }
    }
}

/// Why a member stopped serving its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ending {
    /// Its shutdown future completed.
    Shutdown,
    /// The pool stopped.
    Stopped,
    /// It lost the pool: the parent went silent or evicted it, or the broker stayed out of
    /// reach. It may join again.
    Lost {
        /// What the parent said, if it evicted this member.
        evicted: Option<String>,
    },
}

/// How long a member waits for its last messages to reach the broker when it leaves.
pub(super) const FLUSH: Duration = Duration::from_secs(2);

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<W: Worker> Serving<W> {
    pub(super) async fn serve(
        self: &Arc<Self>,
        mut shutdown: std::pin::Pin<&mut futures_util::future::Fuse<impl Future<Output = ()>>>,
        settings: Settings,
        capacity: usize,
    ) -> Result<(Left, Ending), Error> {
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
        let (heard_tx, heard) = watch::channel(Heard::default());
        // Opened (and opened again once it ends) beside the loop below, which goes on meanwhile:
        // a broker that went away right after the join, or is slow to answer, is waited for
        // like one that goes away later, and the member still hears its parent.
        let mut messages: Option<pull::Stream> = None;
        let mut opening = Some(Box::pin(self.messages(capacity)));
        let mut reopen = tokio::time::interval(Duration::from_millis(250));

        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let (lane_tx, lane_rx) = mpsc::unbounded_channel();
        let mut background = tokio::task::JoinSet::new();
        let pump = tokio::spawn(self.clone().pump(finished_rx, lane_tx));
        let up = tokio::spawn(
            self.clone()
                .up_lane(lane_rx, result_credit, heard, heartbeat),
        );
        background.spawn(self.clone().heartbeat(heartbeat));
        background.spawn(self.clone().progress(ack_wait));
        let me = self.clone();
        background.spawn(async move {
            while let Some(m) = credit.next().await {
                match me.sealer.unpack::<Credit>(&m.subject, &m.payload) {
                    Ok(c) if c.run == me.parent && c.nonce == me.nonce => {
                        heard_tx.send_if_modified(|h| {
                            let news = c.acked > h.acked || c.received > h.received;
                            h.acked = h.acked.max(c.acked);
                            h.received = h.received.max(c.received);
                            news
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
        let mut ending = Ending::Stopped;
        let reason = loop {
            tokio::select! {
                () = &mut shutdown => {
                    ending = Ending::Shutdown;
                    break "shut down".to_string();
                }
                Some(m) = ctl.next() => match self.sealer.unpack::<CtlMsg>(&m.subject, &m.payload) {
                    Ok(c) if c.run != self.parent || c.nonce != self.nonce => self
                        .refusals
                        .refuse(format_args!("a control message for another run")),
                    Ok(CtlMsg { control: Control::Stop, .. }) => {
                        break "the pool stopped".to_string()
                    }
                    Ok(CtlMsg { control: Control::Cancel { ids }, .. }) => self.cancel(&ids),
                    Ok(CtlMsg { control: Control::Evicted { reason }, .. }) => {
                        evicted = Some(reason.clone());
                        ending = Ending::Lost { evicted: Some(reason.clone()) };
                        break format!("evicted: {reason}");
                    }
                    Err(e) => self.refusals.refuse(format_args!("a control message: {e}")),
                },
                _ = check.tick() => {
                    if let Some(why) = parent_silent() {
                        ending = Ending::Lost { evicted: None };
                        break why;
                    }
                }
                opened = finish(&mut opening) => match opened {
                    Ok(m) => messages = Some(m),
                    Err(e) => tracing::warn!("{e}; retrying"),
                },
                _ = reopen.tick(), if messages.is_none() && opening.is_none() => {
                    opening = Some(Box::pin(self.messages(capacity)));
                }
                Some(next) = next_task(&mut messages) => match next {
                    Ok(m) => self.take(m, &finished_tx).await,
                    Err(e) => tracing::debug!("reading tasks: {}", broker::error_text(&e)),
                },
            }
        };
        // Take no more. Tasks already delivered but not yet taken go back at once, for the
        // parent to hand to other members; the leave names them, so that a delivery that ran
        // nothing does not count toward their most deliveries.
        let mut returned = Vec::new();
        while let Some(Some(Ok(m))) = next_task(&mut messages).now_or_never() {
            if let Ok(task) = self.sealer.unpack::<TaskMsg>(&m.subject, &m.payload) {
                if task.run == self.parent {
                    returned.push(task.id);
                }
            }
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
        drop(messages);
        tracing::info!(member = %self.member, "leaving: {reason}");
        let aborts = [pump.abort_handle(), up.abort_handle()];
        // Finish and report what the workers hold; the lanes close once they sent it.
        // Heartbeats and credit go on meanwhile (outputs may wait for the parent's program to
        // read them). Not for a parent that is gone: nobody would take the reports.
        // Whether the parent evicted this member meanwhile: it no longer takes its reports.
        let drain = async {
            loop {
                let mut notified = pin!(self.changed.notified());
                notified.as_mut().enable();
                if lock(&self.running).is_empty() {
                    break;
                }
                // Tasks the parent cancels meanwhile are dropped: one that never ends would
                // keep this member from leaving.
                tokio::select! {
                    () = notified => {}
                    Some(m) = ctl.next() => match self.sealer.unpack::<CtlMsg>(&m.subject, &m.payload) {
                        Ok(c) if c.run != self.parent || c.nonce != self.nonce => self
                            .refusals
                            .refuse(format_args!("a control message for another run")),
                        Ok(CtlMsg { control: Control::Cancel { ids }, .. }) => self.cancel(&ids),
                        Ok(CtlMsg { control: Control::Evicted { reason }, .. }) => {
                            tracing::warn!("evicted while finishing its tasks: {reason}");
                            return true;
                        }
                        // Leaving already.
                        Ok(CtlMsg { control: Control::Stop, .. }) => {}
                        Err(e) => self.refusals.refuse(format_args!("a control message: {e}")),
                    },
                }
            }
            drop(finished_tx);
            pump.abort();
            let _ = up.await;
            false
        };
        let parent_gone = async {
            while parent_silent().is_none() {
                check.tick().await;
            }
        };
        let abandoned = evicted.is_some()
            || tokio::select! {
                evicted = drain => evicted,
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
            returned,
        };
        let subject = self.names.leave(&self.member);
        if let Ok(bytes) = self.sealer.pack(&subject, &leave) {
            let _ = client.publish(subject, bytes.into()).await;
            let _ = tokio::time::timeout(FLUSH, client.flush()).await;
        }
        let left = Left {
            member: self.member.clone(),
            reason,
            tasks: self.ended.load(std::sync::atomic::Ordering::Relaxed),
            resent: self.resent.load(std::sync::atomic::Ordering::Relaxed),
            refused: self.refusals.count(),
        };
        Ok((left, ending))
    }

    /// Opens this member's consumer (the loop above retries a failure).
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
}

/// The next delivered task; `None` once `messages` ended (it is then dropped, to be opened
/// again) or was not open. A stream not open never resolves, leaving the other branches of the
/// serving loop to run.
async fn next_task(
    messages: &mut Option<pull::Stream>,
) -> Option<Result<JsMessage, async_nats::jetstream::consumer::pull::MessagesError>> {
    let Some(stream) = messages else {
        return std::future::pending().await;
    };
    let next = stream.next().await;
    if next.is_none() {
        *messages = None;
    }
    next
}

/// What the future in `slot` resolves to, once it does (the slot is then emptied); an empty
/// slot never resolves.
async fn finish<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    let Some(future) = slot else {
        return std::future::pending().await;
    };
    let out = future.await;
    *slot = None;
    out
}
