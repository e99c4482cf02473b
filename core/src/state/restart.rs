//! When a dead worker number is relaunched, and when it is given up: the restart policy.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a pool relaunches the workers that die.
///
/// A death is a *quick failure* unless the incarnation ended a task or had served for
/// `healthy_after`: a worker that crashes at start-up or on its first task is what the limit is
/// for, not one that served and was then killed. The first relaunch after a quick failure is
/// immediate, each further one within `window` waits twice as long as the one before, from
/// `initial` up to `max_delay`; past `max_restarts` quick failures within `window` the number
/// is given up, and tried again after `retry_after` (or at once on request). A death that was
/// no quick failure clears the count and relaunches at once; a retirement (recycling) always
/// relaunches at once and counts for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Quick failures tolerated within `window`.
    pub max_restarts: u32,
    /// How far back quick failures count.
    pub window: Duration,
    /// The wait before the second relaunch in a row.
    pub initial: Duration,
    /// The longest wait between relaunches.
    pub max_delay: Duration,
    /// An incarnation that served this long before it died did not fail quickly.
    pub healthy_after: Duration,
    /// How long a given-up number waits before it is tried again.
    pub retry_after: Duration,
}

impl Default for RestartPolicy {
    /// 5 quick failures within 60 s; waits of 100 ms doubling up to 5 s; healthy after 1 s;
    /// a given-up number is tried again after 60 s.
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(60),
            initial: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            healthy_after: Duration::from_secs(1),
            retry_after: Duration::from_secs(60),
        }
    }
}

/// How an incarnation of a worker ended, for the restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// It retired gracefully (recycling): it said goodbye after draining.
    Retired,
    /// It died: exited, was killed, or broke the protocol.
    Died,
    /// Its replacement could not be launched (or failed its handshake or init).
    LaunchFailed,
}

/// What the state decided about a dead worker number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Launch a replacement after this wait.
    After(Duration),
    /// Too many quick failures: the number stays dead until `retry_at` (or a revival).
    GiveUp {
        /// Quick failures within the window.
        failures: u32,
        /// When it is tried again.
        retry_at: Instant,
    },
    /// No replacement: respawn is off, or the pool is stopping.
    Never,
}

/// One worker number's restart history.
#[derive(Debug, Clone, Default)]
pub(super) struct History {
    /// Quick failures within the window, oldest first.
    failures: VecDeque<Instant>,
    /// When the current incarnation finished its handshake.
    ready_at: Option<Instant>,
    /// Whether the current incarnation ended a task.
    served: bool,
    /// When the number was given up.
    given_up_at: Option<Instant>,
}

impl History {
    pub(super) fn ready(&mut self, now: Instant) {
        self.ready_at = Some(now);
        self.served = false;
    }

    pub(super) fn ended_task(&mut self) {
        self.served = true;
    }

    pub(super) fn given_up_at(&self) -> Option<Instant> {
        self.given_up_at
    }

    /// Decides for an incarnation that ended at `now`.
    pub(super) fn decide(
        &mut self,
        policy: &RestartPolicy,
        now: Instant,
        how: Departure,
    ) -> Restart {
        let healthy = self.served
            || self
                .ready_at
                .is_some_and(|t| now.saturating_duration_since(t) >= policy.healthy_after);
        self.ready_at = None;
        self.served = false;
        match how {
            Departure::Retired => return Restart::After(Duration::ZERO),
            Departure::Died if healthy => {
                self.failures.clear();
                return Restart::After(Duration::ZERO);
            }
            Departure::Died | Departure::LaunchFailed => {}
        }
        while self
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) > policy.window)
        {
            self.failures.pop_front();
        }
        let earlier = self.failures.len() as u32;
        if earlier >= policy.max_restarts {
            self.given_up_at = Some(now);
            return Restart::GiveUp {
                failures: earlier,
                retry_at: now + policy.retry_after,
            };
        }
        self.failures.push_back(now);
        Restart::After(match earlier {
            0 => Duration::ZERO,
            n => policy
                .initial
                .saturating_mul(1 << (n - 1).min(20))
                .min(policy.max_delay),
        })
    }

    /// Takes the number out of its given-up state, with a clean slate, if it is in it and
    /// (unless `now` is `None`, a revival on request) its retry time has come.
    pub(super) fn revive(&mut self, policy: &RestartPolicy, now: Option<Instant>) -> bool {
        let due = match (self.given_up_at, now) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(at), Some(now)) => now >= at + policy.retry_after,
        };
        if due {
            self.given_up_at = None;
            self.failures.clear();
        }
        due
    }
}
