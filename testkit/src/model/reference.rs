//! The reference model: what a correct pool does, in plain data, one obvious step at a time.

use super::retry::{RefEvent, RefKill, RefLoss};
use looppool_core::TaskId;
use std::collections::BTreeMap;

/// A message the pool queued for a worker, in the order it was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// A task.
    Task(TaskId),
    /// The poison pill.
    Stop,
    /// A cancellation of a task sent before.
    Cancel(TaskId),
}

/// One worker, as the reference sees it.
#[derive(Debug, Clone)]
pub struct RefWorker {
    /// Alive (starting or running).
    pub alive: bool,
    /// Handshake done.
    pub ready: bool,
    /// Incarnation.
    pub generation: u64,
    /// Everything queued for this incarnation, in order.
    pub sent: Vec<Sent>,
    /// How much of `sent` the worker has received.
    pub delivered: usize,
    /// Tasks accepted for it and not ended, in acceptance order.
    pub holding: Vec<TaskId>,
    /// Outputs of this number, by any incarnation, not yet acknowledged.
    pub unacked: usize,
    /// Result credit this incarnation holds: outputs it may emit now.
    pub held_credit: usize,
    /// Credit returned by the consumer and not yet sent to this incarnation.
    pub owed: usize,
    /// What is owed goes at the next delivery however little it is: a stop's backlog or a
    /// replacement's due credit.
    pub owed_urgent: bool,
    /// Credit granted past the result credit when the stop began.
    pub extra_credit: usize,
    /// Tasks this incarnation ended, sticky replays aside.
    pub ended: usize,
    /// Sticky replays sent to this incarnation and not ended.
    pub replays_held: Vec<TaskId>,
    /// Emitted only within the credit it held (a worker that does not is stopped by the
    /// state's own check, and the credit balance is not checked for it).
    pub honest: bool,
    /// Said goodbye.
    pub said_bye: bool,
    /// Killed (at the stop deadline, for a stall, or for a cancelled task it kept).
    pub killed: bool,
    /// Killed for a cancelled task it did not drop in time: its other tasks are retried.
    pub killed_for_cancel: bool,
    /// Tasks cancelled after they were sent, with the tick by which they must be dropped.
    pub cancelling: Vec<(TaskId, u64)>,
    /// Dead, with a replacement on its way.
    pub replacing: bool,
    /// Sticky broadcasts (by key) still to replay, released as capacity allows.
    pub replay: std::collections::VecDeque<u8>,
}

impl RefWorker {
    fn new(generation: u64) -> Self {
        Self {
            alive: true,
            ready: false,
            generation,
            sent: Vec::new(),
            delivered: 0,
            holding: Vec::new(),
            unacked: 0,
            held_credit: 0,
            owed: 0,
            owed_urgent: false,
            extra_credit: 0,
            ended: 0,
            replays_held: Vec::new(),
            honest: true,
            said_bye: false,
            killed: false,
            killed_for_cancel: false,
            cancelling: Vec::new(),
            replacing: false,
            replay: std::collections::VecDeque::new(),
        }
    }

    /// Alive and not asked to stop (retiring or stopping): it takes new tasks.
    pub fn accepts(&self) -> bool {
        self.alive && !self.sent.contains(&Sent::Stop) && self.replay.is_empty()
    }

    /// Tasks the worker has received and not ended.
    pub fn received_holding(&self) -> Vec<TaskId> {
        let received: Vec<TaskId> = self.sent[..self.delivered]
            .iter()
            .filter_map(|s| match s {
                Sent::Task(id) => Some(*id),
                Sent::Stop | Sent::Cancel(_) => None,
            })
            .collect();
        self.holding
            .iter()
            .copied()
            .filter(|id| received.contains(id))
            .collect()
    }

    /// Whether the worker has received the poison pill.
    pub fn got_stop(&self) -> bool {
        self.sent[..self.delivered].contains(&Sent::Stop)
    }
}

/// Where the reference pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefPhase {
    /// Accepting.
    Running,
    /// Draining until the deadline (in ticks).
    Stopping(u64),
    /// Every worker exited after a stop.
    Stopped,
}

/// How an accepted task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Completed, failed or panicked, as its worker reported.
    Reported(super::Ending),
    /// Lost with its worker.
    Lost,
    /// Cancelled.
    Cancelled,
    /// Cancelled at its deadline.
    TimedOut,
}

/// The restart policy the model checks, in ticks: 3 quick failures within 100 ticks, waits of
/// 10 ticks doubling up to 40, healthy after 50 ticks served (or a task ended), a given-up
/// number tried again after 200 ticks.
pub const POLICY: [u64; 6] = [3, 100, 10, 40, 50, 200];

/// Outputs per worker a stop grants past the result credit.
pub const STOP_BACKLOG: usize = 2;

/// Tasks an incarnation ends before it is retired (recycling).
pub const RECYCLE_AFTER: usize = 3;

/// Times a task lost with its worker is sent again.
pub const RETRIES: u32 = 1;

/// Ticks of silence past which a worker holding tasks is killed.
pub const STALL_LIMIT: u64 = 5;

/// Bytes of memory past which a worker retires.
pub const MEMORY_LIMIT: u64 = 100;

/// What the reference decides about a dead worker number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefRestart {
    /// Relaunch after this many ticks.
    After(u64),
    /// Given up after this many quick failures, until this tick.
    GiveUp(u32, u64),
    /// No relaunch.
    Never,
}

/// One worker number's restart history, as the reference keeps it.
#[derive(Debug, Clone, Default)]
pub struct RefHistory {
    /// Ticks of quick failures within the window.
    pub failures: Vec<u64>,
    /// When the current incarnation became ready.
    pub ready_at: Option<u64>,
    /// Whether it ended a task.
    pub served: bool,
    /// When the number was given up.
    pub given_up_at: Option<u64>,
}

/// The reference pool.
#[derive(Debug, Clone)]
pub struct Reference {
    /// Task capacity per worker.
    pub capacity: usize,
    /// Result credit per worker.
    pub credit: usize,
    /// Workers by number.
    pub workers: Vec<RefWorker>,
    /// The next worker round-robin would try (and, least-loaded, the first among equals).
    pub cursor: usize,
    /// Untargeted submissions go to the least-loaded worker with room (else round-robin).
    pub least_loaded: bool,
    /// The next task id.
    pub next_id: TaskId,
    /// The phase.
    pub phase: RefPhase,
    /// The current tick.
    pub now: u64,
    /// Every accepted task and its worker.
    pub accepted: BTreeMap<TaskId, usize>,
    /// Each task's deadline, in ticks, if it has one.
    pub deadlines: BTreeMap<TaskId, u64>,
    /// Sticky broadcasts by key, in the order they were last set.
    pub sticky: Vec<u8>,
    /// Every ended task and how.
    pub ended: BTreeMap<TaskId, End>,
    /// Restart histories by worker number.
    pub histories: Vec<RefHistory>,
    /// Replacements decided and not yet registered or abandoned.
    pub launches: usize,
    /// Times each task was sent.
    pub attempts: BTreeMap<TaskId, u32>,
    /// Where each task was routed: a worker number, or round-robin (`None`).
    pub routes: BTreeMap<TaskId, Option<usize>>,
    /// Lost tasks waiting for room to be retried, oldest first, with the worker they died on.
    pub deferred: std::collections::VecDeque<(TaskId, usize)>,
    /// Decisions made and not yet compared with the state's.
    pub events: Vec<RefEvent>,
}

/// Why the reference refuses a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefRefusal {
    /// The chosen worker is full.
    Full(usize),
    /// Stopping or stopped.
    Closed,
    /// No live worker to take it.
    Unroutable,
    /// This worker (or, round-robin, every one) is being replaced or retired: wait.
    Replacing(usize),
}

impl Reference {
    /// A pool whose workers have all finished their handshake.
    pub fn new(workers: usize, capacity: usize, credit: usize) -> Self {
        let workers_len = workers;
        let mut workers: Vec<RefWorker> = (0..workers).map(|_| RefWorker::new(0)).collect();
        for w in &mut workers {
            w.ready = true;
            w.held_credit = credit;
        }
        Self {
            capacity,
            credit,
            workers,
            cursor: 0,
            least_loaded: false,
            next_id: 1,
            phase: RefPhase::Running,
            now: 0,
            accepted: BTreeMap::new(),
            deadlines: BTreeMap::new(),
            sticky: Vec::new(),
            ended: BTreeMap::new(),
            launches: 0,
            attempts: BTreeMap::new(),
            routes: BTreeMap::new(),
            deferred: std::collections::VecDeque::new(),
            events: Vec::new(),
            histories: vec![
                RefHistory {
                    ready_at: Some(0),
                    ..RefHistory::default()
                };
                workers_len
            ],
        }
    }

    /// The pool's size.
    pub fn size(&self) -> usize {
        self.workers.len()
    }

    fn open(&self) -> Result<(), RefRefusal> {
        match self.phase {
            RefPhase::Running => Ok(()),
            _ => Err(RefRefusal::Closed),
        }
    }

    fn accept(&mut self, worker: usize, route: Option<usize>) -> TaskId {
        let id = self.next_id;
        self.next_id += 1;
        self.take(worker, id, route);
        self.attempts.insert(id, 1);
        id
    }

    /// Worker `worker` takes task `id`, new or retried.
    pub(super) fn take(&mut self, worker: usize, id: TaskId, route: Option<usize>) {
        let w = &mut self.workers[worker];
        w.sent.push(Sent::Task(id));
        w.holding.push(id);
        self.accepted.insert(id, worker);
        self.routes.insert(id, route);
    }

    /// A submission, round-robin (`None`) or targeted.
    pub fn submit(&mut self, target: Option<usize>) -> Result<(usize, TaskId), RefRefusal> {
        let worker = self.choose(target)?;
        if target.is_none() {
            self.cursor = (worker + 1) % self.size();
        }
        Ok((worker, self.accept(worker, target)))
    }

    /// The worker a submission for `target` goes to, or why it is refused.
    pub(super) fn choose(&self, target: Option<usize>) -> Result<usize, RefRefusal> {
        self.open()?;
        let worker = match target {
            Some(k) => {
                let w = &self.workers[k];
                if !w.accepts() {
                    return Err(if w.alive || w.replacing {
                        RefRefusal::Replacing(k)
                    } else {
                        RefRefusal::Unroutable
                    });
                }
                k
            }
            None => {
                let n = self.size();
                // Accepting workers in rotation from the cursor.
                let order: Vec<usize> = (0..n)
                    .map(|i| (self.cursor + i) % n)
                    .filter(|&k| self.workers[k].accepts())
                    .collect();
                let Some(&first) = order.first() else {
                    return Err(self.none_accepting());
                };
                if self.least_loaded {
                    // The fewest held; among equals, the first in rotation.
                    let fewest = order
                        .iter()
                        .map(|&k| self.workers[k].holding.len())
                        .min()
                        .unwrap_or(0);
                    order
                        .into_iter()
                        .find(|&k| self.workers[k].holding.len() == fewest)
                        .unwrap_or(first)
                } else {
                    first
                }
            }
        };
        if self.workers[worker].holding.len() >= self.capacity {
            return Err(RefRefusal::Full(worker));
        }
        Ok(worker)
    }

    /// When no worker accepts tasks: wait for the first one being replaced or retired.
    fn none_accepting(&self) -> RefRefusal {
        (0..self.size())
            .find(|&k| self.workers[k].alive || self.workers[k].replacing)
            .map_or(RefRefusal::Unroutable, RefRefusal::Replacing)
    }

    /// A sticky broadcast under `key`.
    pub fn broadcast_sticky(&mut self, key: u8) -> Result<Vec<(usize, TaskId)>, RefRefusal> {
        let copies = self.broadcast()?;
        self.sticky.retain(|&k| k != key);
        self.sticky.push(key);
        Ok(copies)
    }

    /// A worker is asked to retire; returns whether it began.
    pub fn retire(&mut self, worker: usize) -> bool {
        let running = self.phase == RefPhase::Running;
        let w = &mut self.workers[worker];
        if !running || !w.accepts() {
            return false;
        }
        w.sent.push(Sent::Stop);
        w.replay.clear();
        self.events.push(RefEvent::Retiring(worker));
        true
    }

    /// Releases waiting replays to `worker` while it has room.
    fn release(&mut self, worker: usize) {
        while self.workers[worker].holding.len() < self.capacity {
            if self.workers[worker].replay.pop_front().is_none() {
                break;
            }
            let id = self.accept(worker, Some(worker));
            self.workers[worker].replays_held.push(id);
        }
    }

    /// A broadcast: one copy per live worker, or nothing.
    pub fn broadcast(&mut self) -> Result<Vec<(usize, TaskId)>, RefRefusal> {
        self.open()?;
        if let Some(k) =
            (0..self.size()).find(|&k| self.workers[k].alive && !self.workers[k].replay.is_empty())
        {
            return Err(RefRefusal::Replacing(k));
        }
        let live: Vec<usize> = (0..self.size())
            .filter(|&k| self.workers[k].accepts())
            .collect();
        if live.is_empty() {
            return Err(self.none_accepting());
        }
        if let Some(&k) = live
            .iter()
            .find(|&&k| self.workers[k].holding.len() >= self.capacity)
        {
            return Err(RefRefusal::Full(k));
        }
        Ok(live
            .into_iter()
            .map(|k| (k, self.accept(k, Some(k))))
            .collect())
    }

    /// Whether and when the dead `worker` is relaunched, its incarnation having ended as
    /// `retired`, `launch_failed` or plain died.
    pub fn decide_restart(
        &mut self,
        worker: usize,
        retired: bool,
        launch_failed: bool,
    ) -> RefRestart {
        let [max, window, initial, max_delay, healthy_after, retry_after] = POLICY;
        if self.phase != RefPhase::Running || self.workers[worker].alive {
            return RefRestart::Never;
        }
        let now = self.now;
        let h = &mut self.histories[worker];
        let healthy = h.served || h.ready_at.is_some_and(|t| now - t >= healthy_after);
        h.ready_at = None;
        h.served = false;
        let decision = if retired {
            RefRestart::After(0)
        } else if healthy && !launch_failed {
            h.failures.clear();
            RefRestart::After(0)
        } else {
            h.failures.retain(|&t| now - t <= window);
            let n = h.failures.len() as u64;
            if n >= max {
                h.given_up_at = Some(now);
                RefRestart::GiveUp(n as u32, now + retry_after)
            } else {
                h.failures.push(now);
                RefRestart::After(if n == 0 {
                    0
                } else {
                    (initial << (n - 1)).min(max_delay)
                })
            }
        };
        self.workers[worker].replacing = matches!(decision, RefRestart::After(_));
        match decision {
            RefRestart::After(after) => self.events.push(RefEvent::Relaunch(worker, after)),
            RefRestart::GiveUp(failures, at) => {
                self.events.push(RefEvent::GaveUp(worker, failures, at))
            }
            RefRestart::Never => {}
        }
        decision
    }

    /// [`decide_restart`](Self::decide_restart), counting the replacements under way: a
    /// decision to relaunch starts one, a failed launch not tried again ends it.
    pub fn decide_and_count(
        &mut self,
        worker: usize,
        retired: bool,
        launch_failed: bool,
    ) -> RefRestart {
        let decision = self.decide_restart(worker, retired, launch_failed);
        match (launch_failed, decision) {
            (true, RefRestart::After(_)) => {}
            (true, _) => self.launches = self.launches.saturating_sub(1),
            (false, RefRestart::After(_)) => self.launches += 1,
            _ => {}
        }
        self.place_deferred();
        decision
    }

    /// Whether the pool has stopped: every worker exited, no replacement under way, no retry
    /// waiting.
    pub fn stopped(&self) -> bool {
        self.phase == RefPhase::Stopped && self.launches == 0 && self.deferred.is_empty()
    }

    /// Takes a given-up number back when its time came (or at once, `on_request`).
    pub fn revive(&mut self, worker: usize, on_request: bool) -> bool {
        let retry_after = POLICY[5];
        if self.phase != RefPhase::Running || self.workers[worker].alive {
            return false;
        }
        let h = &mut self.histories[worker];
        let due = match h.given_up_at {
            Some(at) => on_request || self.now >= at + retry_after,
            None => false,
        };
        if due {
            h.given_up_at = None;
            h.failures.clear();
            self.workers[worker].replacing = true;
            self.launches += 1;
            self.events.push(RefEvent::Relaunch(worker, 0));
        }
        due
    }

    /// A worker's task ends as it reported.
    pub fn finish(&mut self, worker: usize, id: TaskId, how: super::Ending) {
        let w = &mut self.workers[worker];
        w.holding.retain(|&t| t != id);
        let replay = w.replays_held.contains(&id);
        w.replays_held.retain(|&t| t != id);
        self.ended.insert(id, End::Reported(how));
        self.release(worker);
        // A sticky replay is neither service nor work.
        if !replay {
            self.histories[worker].served = true;
            self.workers[worker].ended += 1;
            if self.workers[worker].ended >= RECYCLE_AFTER {
                self.retire(worker);
            }
        }
        self.place_deferred();
    }

    /// A worker dies: each task it held is retried (or waits for room to be) while its
    /// retries last and the pool runs, and is lost otherwise. Returns whether it was alive.
    pub fn die(&mut self, worker: usize) -> bool {
        let w = &mut self.workers[worker];
        if !w.alive {
            return false;
        }
        w.alive = false;
        w.replacing = false;
        let held = std::mem::take(&mut w.holding);
        let replays = std::mem::take(&mut w.replays_held);
        let blameless = w.killed_for_cancel;
        let running = self.phase == RefPhase::Running;
        for id in held {
            if running && !replays.contains(&id) && (blameless || self.attempts[&id] <= RETRIES) {
                self.deferred.push_back((id, worker));
            } else {
                self.lose(id, worker, RefLoss::Died);
            }
        }
        if matches!(self.phase, RefPhase::Stopping(_)) && self.workers.iter().all(|w| !w.alive) {
            self.phase = RefPhase::Stopped;
        }
        true
    }

    /// The credit a delivery to `worker` sends: what is owed when it can ride along with
    /// `frames` delivered, is urgent, makes half the result credit (rounded up), or leaves the
    /// worker less than half of it; else nothing.
    pub fn credit_sent(&self, worker: usize, frames: bool) -> usize {
        let w = &self.workers[worker];
        let half = self.credit.div_ceil(2);
        let left = self.credit.saturating_sub(w.unacked + w.owed);
        let worth_a_frame = w.owed_urgent || w.owed >= half || left < half;
        if frames || worth_a_frame {
            w.owed
        } else {
            0
        }
    }

    /// The result credit a replacement of `worker` launched now starts with: what the
    /// number's earlier incarnations left unacknowledged is not granted again.
    pub fn replacement_credit(&self, worker: usize) -> usize {
        self.credit - self.workers[worker].unacked
    }

    /// A replacement, launched with `given` credit, takes a dead worker's number: it is owed
    /// what was acknowledged since; every sticky broadcast is replayed to it first, as many at
    /// a time as its capacity allows. Returns the ids of the replays sent now.
    pub fn replace(&mut self, worker: usize, given: usize) -> Vec<TaskId> {
        self.launches = self.launches.saturating_sub(1);
        let generation = self.workers[worker].generation + 1;
        let unacked = self.workers[worker].unacked;
        self.workers[worker] = RefWorker::new(generation);
        let w = &mut self.workers[worker];
        w.unacked = unacked;
        w.held_credit = given;
        w.owed = self.credit - unacked - given;
        w.owed_urgent = w.owed > 0;
        self.workers[worker].replay = self.sticky.iter().copied().collect();
        let before = self.next_id;
        self.release(worker);
        let replayed = (before..self.next_id).collect();
        self.place_deferred();
        replayed
    }

    /// A stop begins.
    pub fn begin_stop(&mut self, grace: u64) {
        match self.phase {
            RefPhase::Running => {}
            // Again: only brings the deadline forward.
            RefPhase::Stopping(deadline) => {
                self.phase = RefPhase::Stopping(deadline.min(self.now + grace));
                return;
            }
            RefPhase::Stopped => return,
        }
        self.phase = RefPhase::Stopping(self.now + grace);
        for w in &mut self.workers {
            if w.alive && !w.said_bye {
                w.owed += STOP_BACKLOG;
                w.owed_urgent = true;
                w.extra_credit = STOP_BACKLOG;
            }
            if w.alive && !w.sent.contains(&Sent::Stop) {
                w.sent.push(Sent::Stop);
            }
            w.replay.clear();
            w.replacing = false;
        }
        self.place_deferred();
        if self.workers.iter().all(|w| !w.alive) {
            self.phase = RefPhase::Stopped;
        }
    }

    /// Time passes; past the stop deadline every live worker is to be killed, once.
    pub fn advance(&mut self, ticks: u64) {
        self.now += ticks;
        if let RefPhase::Stopping(deadline) = self.phase {
            if self.now >= deadline {
                self.kill_all(RefKill::Stop);
            }
        }
        self.expire();
        self.kill_cancel_keepers();
    }

    /// Every live worker not yet killed is to be killed now.
    pub fn kill_all(&mut self, why: RefKill) {
        for k in 0..self.size() {
            let w = &mut self.workers[k];
            if w.alive && !w.killed {
                w.killed = true;
                self.events.push(RefEvent::Kill(k, why));
            }
        }
    }
}
