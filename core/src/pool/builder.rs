//! Configuring and starting a pool.

use super::link::{self, HandshakeError};
use super::shared::{Inner, Settings, Shared};
use super::Pool;
use crate::error::Error;
use crate::launch::{launch_all, LaunchOptions, StartMethod, LINK_FD_VAR};
use crate::protocol::{DEFAULT_MAX_FRAME, PROTOCOL_VERSION};
use crate::runtime::Runtime;
use crate::state::PoolState;
use crate::worker::{Handshake, Worker, HELLO_LIMIT};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// Configures a [`Pool`]. Made by [`Pool::builder`] (or an adapter's `builder()`).
pub struct Builder<W> {
    runtime: Arc<dyn Runtime>,
    worker_runtime: Option<Arc<dyn Runtime>>,
    name: String,
    workers: Option<usize>,
    capacity: Option<usize>,
    concurrency: usize,
    result_credit: usize,
    start_method: StartMethod,
    max_frame: usize,
    stop_timeout: Duration,
    handshake_timeout: Duration,
    ignore_signals: bool,
    protocol_version: u32,
    _worker: PhantomData<fn() -> W>,
}

impl<W> fmt::Debug for Builder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("workers", &self.workers)
            .field("capacity", &self.capacity)
            .field("concurrency", &self.concurrency)
            .field("result_credit", &self.result_credit)
            .field("start_method", &self.start_method)
            .field("max_frame", &self.max_frame)
            .field("stop_timeout", &self.stop_timeout)
            .finish_non_exhaustive()
    }
}

impl<W: Worker> Builder<W> {
    pub(crate) fn new(runtime: Arc<dyn Runtime>) -> Self {
        Self {
            runtime,
            worker_runtime: None,
            name: "pool".into(),
            workers: None,
            capacity: None,
            concurrency: 1,
            result_credit: 16,
            start_method: StartMethod::default(),
            max_frame: DEFAULT_MAX_FRAME,
            stop_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(30),
            ignore_signals: true,
            protocol_version: PROTOCOL_VERSION,
            _worker: PhantomData,
        }
    }

    /// The pool's name, shown in worker process titles and logs. Default `"pool"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How many workers. Default: the number of CPUs available.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// How many unfinished tasks (queued in the worker or running) one worker may hold; past it
    /// `try_submit` fails with `Full` and `submit` waits. Default: twice the concurrency, so a
    /// worker always has its next task at hand.
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = Some(n);
        self
    }

    /// How many tasks one worker runs at once on its event loop. Default 1.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// How many outputs one worker may emit before the parent acknowledges them. Default 16.
    pub fn result_credit(mut self, n: usize) -> Self {
        self.result_credit = n;
        self
    }

    /// How workers are started. Default [`StartMethod::ReExec`].
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = method;
        self
    }

    /// The largest frame body accepted or sent, in bytes; checked before allocating. Tasks and
    /// outputs that encode larger are refused at the call. Default 16 MiB; at least 64 KiB.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How long a graceful [`stop`](Pool::stop) waits before killing workers that have not
    /// finished. Default 30 s.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// How long a starting worker may take to answer the handshake (its init hook included).
    /// Default 30 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Whether workers ignore SIGINT and SIGTERM, which a terminal or a service manager sends to
    /// the whole process group; the parent then stops them through the pool. Default `true`.
    pub fn ignore_signals(mut self, ignore: bool) -> Self {
        self.ignore_signals = ignore;
        self
    }

    /// The runtime that fork and thread workers build for themselves. Default: the parent's.
    /// (Re-executed workers use the runtime named in their `init` entry.)
    pub fn worker_runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.worker_runtime = Some(runtime);
        self
    }

    /// Announce another protocol version in the handshake, to test the refusal.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn protocol_version(mut self, version: u32) -> Self {
        self.protocol_version = version;
        self
    }

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
        let capacity = self.capacity.unwrap_or(self.concurrency.saturating_mul(2));
        let opts = LaunchOptions {
            pool_name: self.name.clone(),
            ignore_signals: self.ignore_signals,
            worker_runtime: self
                .worker_runtime
                .clone()
                .unwrap_or_else(|| self.runtime.clone()),
        };
        let launched = launch_all::<W>(self.start_method, n, &opts).await?;
        let killers: Vec<_> = launched.iter().map(|l| l.killer.clone()).collect();
        let kill_all = || killers.iter().for_each(|k| k.kill_and_reap_blocking());

        let runtime = &*self.runtime;
        let handshakes = launched.into_iter().enumerate().map(|(worker, l)| {
            let hello = Handshake {
                worker,
                pool_size: n,
                concurrency: self.concurrency,
                result_credit: self.result_credit,
                max_frame: self.max_frame,
                pool_name: self.name.clone(),
                worker_name: W::name().to_string(),
            };
            async move {
                let io = l
                    .transport
                    .into_io(runtime)
                    .map_err(|source| Error::Launch { worker, source })?;
                let (reader, writer, pid) = link::handshake(
                    io,
                    &hello,
                    self.protocol_version,
                    self.handshake_timeout,
                    runtime,
                )
                .await
                .map_err(|e| match e {
                    HandshakeError::Protocol(reason) => Error::Handshake { worker, reason },
                    HandshakeError::Init(message) => Error::Init { worker, message },
                })?;
                Ok::<_, Error>((reader, writer, pid, l.killer, l.reaper))
            }
        });
        let mut links = Vec::with_capacity(n);
        for result in futures_util::future::join_all(handshakes).await {
            match result {
                Ok(link) => links.push(link),
                Err(e) => {
                    kill_all();
                    return Err(e);
                }
            }
        }

        let inner = Inner {
            state: PoolState::new(n, capacity, self.result_credit),
            pending: HashMap::new(),
            killers: killers.into_iter().map(Some).collect(),
            exits: vec![None; n],
            pids: links.iter().map(|l| Some(l.2)).collect(),
            killed_at_deadline: Vec::new(),
        };
        let settings = Settings {
            name: self.name,
            max_frame: self.max_frame,
            stop_timeout: self.stop_timeout,
        };
        let shared = Arc::new(Shared::new(inner, self.runtime, settings));
        {
            let mut inner = shared.lock();
            for worker in 0..n {
                inner
                    .state
                    .handle_ready(worker)
                    .expect("a fresh worker's first handshake");
            }
        }
        for (worker, (reader, writer, _, killer, reaper)) in links.into_iter().enumerate() {
            link::spawn(&shared, worker, 0, reader, writer, killer, reaper);
        }
        tracing::debug!(pool = %shared.settings.name, workers = n, "looppool started");
        Ok(Pool::from_shared(shared))
    }
}
