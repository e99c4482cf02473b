//! What the parent knows about each worker, published two ways: through the `metrics` facade
//! (any exporter: Prometheus, statsd, ...) with `pool` and `worker` labels, and as a
//! [`PoolStats`] snapshot from [`Pool::stats`](super::Pool::stats).
//!
//! Workers measure themselves (CPU, memory, loop lag, runtime tasks) and report every
//! [`stats_interval`](super::Builder::stats_interval); the parent counts task ends, losses and
//! latencies itself as they happen.

use crate::protocol::WireStats;
use crate::state::WorkerStatus;
use metrics::{Counter, Gauge, Histogram, Unit};
use std::time::{Duration, Instant};

/// Metric names, each labelled with `pool` and `worker`.
pub mod names {
    /// Gauge: CPU use (user + system) over the last report, as a fraction of one core.
    pub const CPU: &str = "looppool_worker_cpu_ratio";
    /// Gauge: resident memory, in bytes.
    pub const RSS: &str = "looppool_worker_rss_bytes";
    /// Gauge: peak resident memory, in bytes.
    pub const PEAK_RSS: &str = "looppool_worker_peak_rss_bytes";
    /// Gauge: how late the loop's periodic timer fired at worst over the last report, seconds.
    pub const LOOP_LAG: &str = "looppool_worker_loop_lag_seconds";
    /// Gauge: tasks alive on the worker's runtime (runtimes that tell: tokio).
    pub const RUNTIME_TASKS: &str = "looppool_worker_runtime_tasks";
    /// Gauge: tasks the worker received and has not started.
    pub const QUEUED: &str = "looppool_worker_tasks_queued";
    /// Gauge: tasks running in the worker.
    pub const RUNNING: &str = "looppool_worker_tasks_running";
    /// Gauge: tasks sent to the worker that have not ended.
    pub const HELD: &str = "looppool_worker_tasks_held";
    /// Gauge: outputs of the worker the consumer has not acknowledged.
    pub const UNACKED: &str = "looppool_worker_outputs_unacked";
    /// Counter: tasks that completed.
    pub const COMPLETED: &str = "looppool_tasks_completed_total";
    /// Counter: tasks that failed, panicked or timed out.
    pub const FAILED: &str = "looppool_tasks_failed_total";
    /// Counter: tasks lost with their worker (and not retried).
    pub const LOST: &str = "looppool_tasks_lost_total";
    /// Histogram: from submission to the task's end, in seconds.
    pub const LATENCY: &str = "looppool_task_latency_seconds";
    /// Counter: times the worker's loop was found blocked past the threshold.
    pub const BLOCKED: &str = "looppool_worker_blocked_total";
    /// Counter: times the worker was replaced.
    pub const RESTARTS: &str = "looppool_worker_restarts_total";
    /// Counter: log events the worker dropped because its link was backed up.
    pub const LOGS_DROPPED: &str = "looppool_worker_logs_dropped_total";
}

/// A snapshot of a pool's workers, from [`Pool::stats`](super::Pool::stats).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolStats {
    /// The pool's name.
    pub name: String,
    /// One entry per worker, by worker number.
    pub workers: Vec<WorkerStats>,
}

impl PoolStats {
    /// Tasks completed by all workers.
    pub fn completed(&self) -> u64 {
        self.workers.iter().map(|w| w.completed).sum()
    }
}

/// What the parent knows about one worker.
///
/// Fields measured by the worker (`cpu`, `rss`, `peak_rss`, `loop_lag`, `runtime_tasks`,
/// `queued`, `running`) are as of its last report and `None` or zero before the first one; the
/// others are the parent's own counts, current when the snapshot is taken. Counts cover every
/// incarnation of the worker number. A worker that is a thread of the parent reports the
/// parent's memory, and the CPU time of its own thread.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The worker's number.
    pub worker: usize,
    /// The process id of its current incarnation.
    pub pid: Option<u32>,
    /// Its status in the pool.
    pub status: WorkerStatus,
    /// Times it was replaced.
    pub restarts: u64,
    /// Given up after too many quick failures: tried again at this time (or by
    /// [`Pool::revive`](crate::Pool::revive)).
    pub given_up_until: Option<Instant>,
    /// CPU use (user + system) over the last report interval, as a fraction of one core.
    pub cpu: f64,
    /// Resident memory, in bytes.
    pub rss: u64,
    /// Peak resident memory, in bytes.
    pub peak_rss: u64,
    /// How late the loop's periodic timer fired at worst over the last report interval.
    pub loop_lag: Duration,
    /// The worst `loop_lag` reported so far.
    pub max_loop_lag: Duration,
    /// Tasks alive on the worker's runtime, where the runtime tells (tokio).
    pub runtime_tasks: Option<u64>,
    /// Tasks the worker had received and not started.
    pub queued: usize,
    /// Tasks the worker was running.
    pub running: usize,
    /// Tasks sent to it (or waiting to be sent) that have not ended.
    pub held: usize,
    /// Its outputs the consumer has not acknowledged.
    pub unacked: usize,
    /// Tasks it completed.
    pub completed: u64,
    /// Tasks that failed, panicked or timed out on it.
    pub failed: u64,
    /// Tasks lost with it (and not retried).
    pub lost: u64,
    /// Tasks that ended on it whose latency was measured (submission to end).
    pub latency_count: u64,
    /// Their mean latency.
    pub latency_mean: Duration,
    /// Their largest latency.
    pub latency_max: Duration,
    /// How long its loop has been silent, if longer than the blocked threshold right now.
    pub blocked_for: Option<Duration>,
    /// Times its loop was found blocked past the threshold.
    pub blocked_total: u64,
    /// Log events it dropped because its link was backed up.
    pub logs_dropped: u64,
    /// When its last report arrived.
    pub reported_at: Option<Instant>,
}

/// One worker's metric handles, registered once when the pool starts.
pub(crate) struct Instruments {
    cpu: Gauge,
    rss: Gauge,
    peak_rss: Gauge,
    lag: Gauge,
    runtime_tasks: Gauge,
    queued: Gauge,
    running: Gauge,
    held: Gauge,
    unacked: Gauge,
    completed: Counter,
    failed: Counter,
    lost: Counter,
    latency: Histogram,
    pub(crate) blocked: Counter,
    pub(crate) restarts: Counter,
    logs_dropped: Counter,
}

/// Describes every metric to the installed recorder.
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(names::CPU, "CPU use over the last report, in cores");
    describe_gauge!(names::RSS, Unit::Bytes, "resident memory");
    describe_gauge!(names::PEAK_RSS, Unit::Bytes, "peak resident memory");
    describe_gauge!(names::LOOP_LAG, Unit::Seconds, "worst event-loop lag");
    describe_gauge!(names::RUNTIME_TASKS, "tasks alive on the runtime");
    describe_gauge!(names::QUEUED, "tasks received and not started");
    describe_gauge!(names::RUNNING, "tasks running");
    describe_gauge!(names::HELD, "tasks sent and not ended");
    describe_gauge!(names::UNACKED, "outputs not acknowledged");
    describe_counter!(names::COMPLETED, "tasks completed");
    describe_counter!(names::FAILED, "tasks failed, panicked or timed out");
    describe_counter!(names::LOST, "tasks lost with their worker");
    describe_histogram!(names::LATENCY, Unit::Seconds, "submission to end");
    describe_counter!(names::BLOCKED, "times the loop was found blocked");
    describe_counter!(names::RESTARTS, "times the worker was replaced");
    describe_counter!(names::LOGS_DROPPED, "log events dropped");
}

impl Instruments {
    pub(crate) fn new(pool: &str, worker: usize) -> Self {
        let labels = [("pool", pool.to_string()), ("worker", worker.to_string())];
        Self {
            cpu: metrics::gauge!(names::CPU, &labels),
            rss: metrics::gauge!(names::RSS, &labels),
            peak_rss: metrics::gauge!(names::PEAK_RSS, &labels),
            lag: metrics::gauge!(names::LOOP_LAG, &labels),
            runtime_tasks: metrics::gauge!(names::RUNTIME_TASKS, &labels),
            queued: metrics::gauge!(names::QUEUED, &labels),
            running: metrics::gauge!(names::RUNNING, &labels),
            held: metrics::gauge!(names::HELD, &labels),
            unacked: metrics::gauge!(names::UNACKED, &labels),
            completed: metrics::counter!(names::COMPLETED, &labels),
            failed: metrics::counter!(names::FAILED, &labels),
            lost: metrics::counter!(names::LOST, &labels),
            latency: metrics::histogram!(names::LATENCY, &labels),
            blocked: metrics::counter!(names::BLOCKED, &labels),
            restarts: metrics::counter!(names::RESTARTS, &labels),
            logs_dropped: metrics::counter!(names::LOGS_DROPPED, &labels),
        }
    }
}

/// The parent's running account of one worker.
#[derive(Debug, Default)]
pub(crate) struct Account {
    pub(crate) last: WireStats,
    cpu: f64,
    /// CPU time and arrival of the previous report of the current incarnation.
    previous: Option<(u64, Instant)>,
    reported_at: Option<Instant>,
    max_lag: Duration,
    pub(crate) restarts: u64,
    completed: u64,
    failed: u64,
    lost: u64,
    latency_count: u64,
    latency_total: Duration,
    latency_max: Duration,
    /// When its loop was found blocked, while it still is.
    pub(crate) blocked_since: Option<Instant>,
    pub(crate) blocked_total: u64,
    logs_dropped_before: u64,
}

impl Account {
    /// A report arrived at `now`; `held` and `unacked` are the parent's current counts.
    pub(crate) fn report(
        &mut self,
        stats: WireStats,
        now: Instant,
        held: usize,
        unacked: usize,
        m: &Instruments,
    ) {
        if let Some((cpu_us, at)) = self.previous {
            let wall = now.saturating_duration_since(at).as_secs_f64();
            if wall > 0.0 {
                self.cpu = stats.cpu_us.saturating_sub(cpu_us) as f64 / 1e6 / wall;
            }
        }
        self.previous = Some((stats.cpu_us, now));
        self.reported_at = Some(now);
        let lag = Duration::from_micros(stats.lag_us);
        self.max_lag = self.max_lag.max(lag);
        m.cpu.set(self.cpu);
        m.rss.set(stats.rss as f64);
        m.peak_rss.set(stats.peak_rss as f64);
        m.lag.set(lag.as_secs_f64());
        if let Some(n) = stats.runtime_tasks {
            m.runtime_tasks.set(n as f64);
        }
        m.queued.set(stats.queued as f64);
        m.running.set(stats.running as f64);
        m.held.set(held as f64);
        m.unacked.set(unacked as f64);
        m.logs_dropped
            .absolute(self.logs_dropped_before.saturating_add(stats.logs_dropped));
        self.last = stats;
    }

    /// A task ended on this worker, `latency` after it was submitted.
    pub(crate) fn ended(&mut self, ok: bool, latency: Duration, m: &Instruments) {
        if ok {
            self.completed += 1;
            m.completed.increment(1);
        } else {
            self.failed += 1;
            m.failed.increment(1);
        }
        self.latency_count += 1;
        self.latency_total += latency;
        self.latency_max = self.latency_max.max(latency);
        m.latency.record(latency.as_secs_f64());
    }

    /// `n` tasks were lost with this worker.
    pub(crate) fn lost(&mut self, n: usize, m: &Instruments) {
        self.lost += n as u64;
        m.lost.increment(n as u64);
    }

    /// The worker's incarnation ended: its own counters start again in the next one.
    pub(crate) fn incarnation_ended(&mut self) {
        // A replacement starts unblocked; its own monitor reports it if it blocks.
        self.blocked_since = None;
        self.logs_dropped_before = self
            .logs_dropped_before
            .saturating_add(self.last.logs_dropped);
        self.last = WireStats::default();
        self.previous = None;
        self.cpu = 0.0;
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn snapshot(
        &self,
        worker: usize,
        pid: Option<u32>,
        status: WorkerStatus,
        held: usize,
        unacked: usize,
        now: Instant,
    ) -> WorkerStats {
        let s = &self.last;
        WorkerStats {
            worker,
            pid,
            status,
            restarts: self.restarts,
            given_up_until: None,
            cpu: self.cpu,
            rss: s.rss,
            peak_rss: s.peak_rss,
            loop_lag: Duration::from_micros(s.lag_us),
            max_loop_lag: self.max_lag,
            runtime_tasks: s.runtime_tasks,
            queued: s.queued as usize,
            running: s.running as usize,
            held,
            unacked,
            completed: self.completed,
            failed: self.failed,
            lost: self.lost,
            latency_count: self.latency_count,
            latency_mean: match self.latency_count {
                0 => Duration::ZERO,
                n => Duration::from_secs_f64(self.latency_total.as_secs_f64() / n as f64),
            },
            latency_max: self.latency_max,
            blocked_for: self.blocked_since.map(|t| now.saturating_duration_since(t)),
            blocked_total: self.blocked_total,
            logs_dropped: self.logs_dropped_before.saturating_add(s.logs_dropped),
            reported_at: self.reported_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_the_share_of_wall_time_between_two_reports() {
        let m = Instruments::new("test", 0);
        let mut account = Account::default();
        let t0 = Instant::now();
        let report = |cpu_us, lag_us| WireStats {
            cpu_us,
            lag_us,
            rss: 5 << 20,
            peak_rss: 6 << 20,
            ..WireStats::default()
        };
        account.report(report(1_000_000, 3_000), t0, 2, 1, &m);
        let first = account.snapshot(0, Some(1), WorkerStatus::Ready, 2, 1, t0);
        assert_eq!(first.cpu, 0.0, "one report gives no rate");
        account.report(
            report(1_250_000, 1_000),
            t0 + Duration::from_millis(500),
            2,
            1,
            &m,
        );
        let second = account.snapshot(0, Some(1), WorkerStatus::Ready, 2, 1, t0);
        assert!((second.cpu - 0.5).abs() < 1e-9, "cpu {}", second.cpu);
        assert_eq!(second.loop_lag, Duration::from_millis(1));
        assert_eq!(second.max_loop_lag, Duration::from_millis(3));
        assert_eq!((second.rss, second.peak_rss), (5 << 20, 6 << 20));
    }

    #[test]
    fn task_ends_count_and_average_their_latency_across_incarnations() {
        let m = Instruments::new("test", 0);
        let mut account = Account::default();
        account.ended(true, Duration::from_millis(10), &m);
        account.ended(false, Duration::from_millis(30), &m);
        account.lost(2, &m);
        account.incarnation_ended();
        account.ended(true, Duration::from_millis(20), &m);
        let s = account.snapshot(0, None, WorkerStatus::Ready, 0, 0, Instant::now());
        assert_eq!((s.completed, s.failed, s.lost), (2, 1, 2));
        assert_eq!(s.latency_count, 3);
        assert_eq!(s.latency_mean, Duration::from_millis(20));
        assert_eq!(s.latency_max, Duration::from_millis(30));
    }
}
