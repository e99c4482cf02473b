//! Starting a configured pool: checking the configuration, launching and handshaking every
//! worker (none outlives a start that fails or is dropped), and handing each to its supervisor.

use super::nice::WorkerNice;
use super::Builder;
use crate::error::Error;
use crate::launch::{
    launch_all, launch_one, Killer, LaunchOptions, Launched, StartMethod, LINK_FD_VAR,
};
use crate::pool::incarnation::{Launch, Linked, Respawner};
use crate::pool::shared::{Inner, Settings, Shared, WorkerEntry};
use crate::pool::{clock, supervisor, Pool};
use crate::protocol::{handshake, Handshake, HandshakeError, HELLO_LIMIT, HELLO_READ_LIMIT};
use crate::runtime::Runtime;
use crate::state::PoolState;
use crate::worker::{filter_code, Worker};
use std::sync::Arc;
use std::time::Duration;
use tracing::level_filters::LevelFilter;

/// Workers to kill and reap when dropped (unless emptied first).
struct KillOnDrop(Vec<Killer>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for killer in &self.0 {
            killer.kill_and_reap_blocking();
        }
    }
}

/// Everything a launch needs, shared by the start and every later replacement.
struct LaunchPlan {
    method: StartMethod,
    opts: LaunchOptions,
    hello: Handshake,
    protocol_version: u32,
    handshake_timeout: Duration,
    runtime: Arc<dyn Runtime>,
}

impl LaunchPlan {
    /// Wraps a launched worker's link and runs the handshake, granting `credit` outputs.
    async fn link(
        &self,
        worker: usize,
        launched: Launched,
        credit: usize,
    ) -> Result<Linked, Error> {
        let fd = launched.parent_fd();
        let sender = launched.parent_sender();
        let io = match launched.transport.into_io(&*self.runtime) {
            Ok(io) => io,
            Err(source) => {
                launched.killer.kill_and_reap_blocking();
                return Err(Error::Launch { worker, source });
            }
        };
        let hello = Handshake {
            worker,
            result_credit: credit,
            ..self.hello.clone()
        };
        let linked = handshake(
            io,
            &hello,
            self.protocol_version,
            self.handshake_timeout,
            &*self.runtime,
        )
        .await;
        match linked {
            Ok((reader, writer, pid)) => Ok(Linked {
                reader,
                writer,
                pid,
                fd,
                sender,
                killer: launched.killer,
                reaper: launched.reaper,
            }),
            Err(e) => {
                let exit = launched.killer.kill_and_reap_blocking();
                Err(match e {
                    HandshakeError::Protocol(reason) => Error::Handshake { worker, reason },
                    HandshakeError::Init(message) => Error::Init { worker, message },
                    HandshakeError::Closed => Error::Handshake {
                        worker,
                        reason: match exit {
                            Some(exit) => format!(
                                "the worker process ended ({exit}) before answering the \
                                 handshake: its init hook ended the process, or the program's \
                                 main does not call looppool's init() first thing"
                            ),
                            None => "the worker thread ended before answering the handshake".into(),
                        },
                    },
                })
            }
        }
    }
}

impl<W: Worker> Builder<W> {
    fn validate(&self) -> Result<usize, Error> {
        let workers = match self.workers {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::Config(what.into()))
            }
        };
        check(workers >= 1, "a pool needs at least one worker")?;
        check(workers <= u32::MAX as usize, "too many workers")?;
        check(self.concurrency >= 1, "concurrency must be at least 1")?;
        check(self.capacity != Some(0), "capacity must be at least 1")?;
        check(self.result_credit >= 1, "result credit must be at least 1")?;
        check(
            self.result_credit <= u32::MAX as usize,
            "result credit is too large",
        )?;
        check(
            (HELLO_LIMIT..=u32::MAX as usize).contains(&self.max_frame),
            "the frame limit must be between 64 KiB and 4 GiB",
        )?;
        check(
            self.stats_interval
                .is_none_or(|d| d >= Duration::from_millis(10)),
            "the stats interval must be at least 10 ms",
        )?;
        check(
            self.blocked_threshold
                .is_none_or(|d| d >= Duration::from_millis(40)),
            "the blocked threshold must be at least 40 ms",
        )?;
        check(
            self.frame_timeout >= Duration::from_millis(10),
            "the frame timeout must be at least 10 ms",
        )?;
        check(
            !matches!(self.nice, WorkerNice::Exactly(n) if !(0..=19).contains(&n)),
            "the workers' nice value must be between 0 and 19",
        )?;
        check(
            self.task_timeout != Some(Duration::ZERO),
            "the task timeout must be positive",
        )?;
        check(
            std::env::var_os(LINK_FD_VAR).is_none(),
            "this process was started as a looppool worker, but its main did not call looppool's \
             init() before building a pool",
        )?;
        Ok(workers)
    }

    /// Launches the workers, waits until each has run its init hook, and returns the pool.
    ///
    /// If any worker fails to launch, to handshake or to initialise, every worker already
    /// launched is killed and the first failure is returned.
    pub async fn start(self) -> Result<Pool<W>, Error> {
        let n = self.validate()?;
        let config = match &self.config {
            None => None,
            Some(Ok(bytes)) => Some(bytes.clone()),
            Some(Err(e)) => return Err(Error::Config(e.clone())),
        };
        let capacity = self.capacity.unwrap_or(self.concurrency.saturating_mul(2));
        // Heartbeats matter to the stall watchdog (which runs with a task timeout) and to
        // blocked-loop reports; a quarter of the tighter limit keeps either from firing early.
        let stall_limit = self.task_timeout.map(|t| t + self.stall_grace);
        let heartbeat = [stall_limit, self.blocked_threshold]
            .into_iter()
            .flatten()
            .min()
            .map(|l| (l / 4).clamp(Duration::from_millis(10), Duration::from_millis(500)));
        let log_level = filter_code(self.forward_logs.unwrap_or_else(LevelFilter::current));
        let plan = Arc::new(LaunchPlan {
            method: self.start_method,
            opts: LaunchOptions {
                pool_name: self.name.clone(),
                ignore_signals: self.ignore_signals,
                nice: self.nice.resolve(crate::launch::own_nice()),
                worker_runtime: self
                    .worker_runtime
                    .clone()
                    .unwrap_or_else(|| self.runtime.clone()),
            },
            hello: Handshake {
                worker: 0,
                pool_size: n,
                concurrency: self.concurrency,
                result_credit: self.result_credit,
                max_frame: self.max_frame,
                task_timeout: self.task_timeout,
                heartbeat,
                stats: self.stats_interval,
                log_level,
                own_process: self.start_method != StartMethod::Thread,
                pool_name: self.name.clone(),
                worker_name: W::name().to_string(),
                config,
            },
            protocol_version: self.protocol_version,
            handshake_timeout: self.handshake_timeout,
            runtime: self.runtime.clone(),
        });

        // The handshake carries the worker configuration: it must fit one frame.
        let mut hello = Vec::new();
        let limit = self.max_frame.min(HELLO_READ_LIMIT);
        if let Err(e) = plan.hello.encode(self.protocol_version, &mut hello, limit) {
            let size = plan.hello.config.as_ref().map_or(0, |c| c.len());
            return Err(Error::Config(format!(
                "the worker configuration ({size} bytes) does not fit in the handshake under the \
                 frame limit of {limit} bytes (Builder::max_frame, and at most 64 MiB): {e}"
            )));
        }
        drop(hello);

        // Kills and reaps every worker launched so far if the start fails, or if its future is
        // dropped before it completes: no process outlives a start that did not give a pool.
        let mut launching = KillOnDrop(Vec::with_capacity(n));
        let launched = launch_all::<W>(plan.method, n, &plan.opts, &mut launching.0).await?;
        let handshakes = launched
            .into_iter()
            .enumerate()
            .map(|(worker, l)| plan.link(worker, l, self.result_credit));
        let mut links = Vec::with_capacity(n);
        for result in futures_util::future::join_all(handshakes).await {
            links.push(result?);
        }
        // The pool owns them now.
        launching.0.clear();

        let respawner = self.respawn.then(|| {
            let plan = plan.clone();
            let launch: Launch = Box::new(move |worker, link_fds, credit, spawned| {
                let plan = plan.clone();
                Box::pin(async move {
                    let launched =
                        launch_one::<W>(plan.method, worker, &plan.opts, &link_fds).await?;
                    spawned(launched.killer.clone());
                    plan.link(worker, launched, credit).await
                })
            });
            Respawner { launch }
        });
        let entries = links
            .iter_mut()
            .map(|l| WorkerEntry {
                killer: Some(l.killer.clone()),
                pid: Some(l.pid),
                link_fd: l.fd,
                sender: l.sender.take(),
                ..WorkerEntry::default()
            })
            .collect();
        let mut inner = Inner::new(PoolState::new(n, capacity, self.result_credit), entries);
        inner
            .state
            .set_restart_policy(self.respawn.then_some(self.restart));
        inner.state.set_stop_backlog(self.stop_backlog);
        inner.state.set_recycle_after(self.recycle_after);
        inner.state.set_routing(self.routing);
        inner.state.set_cancel_grace(self.cancel_grace);
        inner.state.set_retries(self.retries);
        inner.state.set_stall_limit(stall_limit);
        inner.state.set_memory_limit(
            self.rss_limit
                .filter(|_| self.start_method != StartMethod::Thread),
        );
        let now = self.runtime.now();
        for worker in 0..n {
            inner
                .state
                .handle_ready(worker, now)
                .expect("a fresh worker's first handshake");
        }
        let settings = Settings {
            name: self.name,
            max_frame: self.max_frame,
            stop_timeout: self.stop_timeout,
            watch_memory: self.rss_limit.is_some(),
            watch_stalls: stall_limit.is_some(),
            blocked_threshold: self.blocked_threshold,
            concurrency: self.concurrency,
            monitor_every: heartbeat.unwrap_or(Duration::from_secs(1)),
            frame_timeout: self.frame_timeout,
            processes: self.start_method != StartMethod::Thread,
        };
        let shared = Arc::new(Shared::new(inner, self.runtime, settings, respawner));
        for (worker, l) in links.into_iter().enumerate() {
            supervisor::spawn(&shared, worker, l);
        }
        clock::spawn(&shared);
        tracing::debug!(pool = %shared.settings.name, workers = n, "looppool started");
        Ok(Pool::from_shared(shared))
    }
}
