//! The worker the conformance suite drives: each task variant exercises one behaviour.

use looppool_core::{async_trait, BoxError, Context, Fault, PutError, Worker};
use serde::{Deserialize, Serialize};
use std::cell::Cell;

/// When set to a path that exists, a starting [`Probe`] appends a byte to that file and fails.
pub(super) const FAIL_INIT_VAR: &str = "LOOPPOOL_TESTKIT_FAIL_INIT";

/// When set to a path that exists, a starting [`Probe`] appends a byte to that file and waits a
/// minute in its init hook.
pub(crate) const SLOW_INIT_VAR: &str = "LOOPPOOL_TESTKIT_SLOW_INIT";

/// A value whose serialisation always fails, to test encode errors on both sides.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Refuse;

impl Serialize for Refuse {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be encoded",
        ))
    }
}

/// What a [`Probe`]'s tasks fail with: a typed error that crosses the process boundary as a
/// value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeError {
    /// A failure described in text.
    Message(String),
    /// The answer to [`Task::Refuse`].
    Refused {
        /// The code asked for.
        code: u32,
    },
    /// An error the worker cannot encode.
    Unencodable(Refuse),
    /// An error whose decoding panics in the parent.
    Undecodable(Grumpy),
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for ProbeError {
    fn from(e: E) -> Self {
        ProbeError::Message(e.to_string())
    }
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Message(m) => f.write_str(m),
            ProbeError::Refused { code } => write!(f, "refused with code {code}"),
            ProbeError::Unencodable(_) => f.write_str("an error that refuses to be encoded"),
            ProbeError::Undecodable(_) => f.write_str("an error that panics when decoded"),
        }
    }
}

/// A value that encodes, and whose decoding panics, as a user's `Deserialize` might.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grumpy;

impl<'de> Deserialize<'de> for Grumpy {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("Grumpy refuses to be decoded")
    }
}

/// What the suite asks a [`Probe`] to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Task {
    /// Emit `Doubled(2n)`.
    Double(u64),
    /// Remember a value.
    Set(i64),
    /// Emit the remembered value and the worker number.
    Get,
    /// Emit the worker number.
    WhoAmI,
    /// Fail with this message.
    Fail(String),
    /// Fail with [`ProbeError::Refused`] and this code.
    Refuse(u32),
    /// Fail with [`ProbeError::Unencodable`].
    FailUnencodable,
    /// Fail with [`ProbeError::Undecodable`].
    FailUndecodable,
    /// Panic with this message.
    Panic(String),
    /// Emit `Seq(0..n)` with `put`, waiting for credit.
    Emit(u32),
    /// `try_put` `Seq(0..n)`; fail unless exactly `accepted` went through and every refusal
    /// handed its output back.
    TryEmit {
        /// How many to try.
        n: u32,
        /// How many must be accepted.
        accepted: u32,
    },
    /// Emit `Seq(0)` then `Seq(1)`: with a result credit of 1 the task ends only after the
    /// consumer acknowledged the first output.
    Hold,
    /// Try to emit an output that cannot be encoded; expect the error, then emit `Doubled(1)`.
    PutUnencodable,
    /// A task that cannot be encoded in the parent.
    Unencodable(Refuse),
    /// A large task (to exceed the frame limit).
    Blob(Vec<u8>),
    /// Break the wire protocol.
    Fault(Fault),
    /// End the worker process with this exit code.
    Exit(i32),
    /// Create `<file>.spinning`, then busy-loop, never yielding to the event loop, until the
    /// file exists.
    SpinUntilExists(String),
    /// Emit `Seq(0..first)`, wait on the worker's timer until the file exists, then emit
    /// `Seq(first..first + then)`.
    EmitAcross {
        /// Outputs before the wait.
        first: u32,
        /// The file to wait for.
        file: String,
        /// Outputs after it.
        then: u32,
    },
    /// If this file exists, remove it and end the process with code 7; otherwise emit
    /// `Doubled(1)`. A task that crashes its worker once.
    CrashOnce(String),
    /// Wait this many milliseconds on the worker's timer.
    Sleep(u64),
    /// Busy-loop for this many milliseconds, never yielding.
    Spin(u64),
    /// Emit the worker process's pid.
    Pid,
    /// Allocate and keep this many MiB.
    Grow(usize),
    /// Emit `Digest` of these bytes.
    Digest(Vec<u8>),
    /// Emit an `INFO` `tracing` event with this message and a field `answer = 42`.
    Log(String),
    /// Emit `Bytes` of this many zeros.
    Zeros(usize),
    /// Start `sleep` for this many seconds as a program of its own, and emit its pid.
    Spawn(u32),
    /// Fork a child that sleeps this many seconds holding the worker's descriptors, and emit
    /// its pid.
    ForkSleeper(u32),
    /// Emit `Doubled(0)` tagged with this task id, whichever task the worker holds.
    PutAs(u64),
    /// Emit the worker configuration the worker's init decoded, if any.
    Config,
    /// Append a byte to this file every 10 ms, forever: a side effect that shows whether the
    /// task still runs.
    Tick(String),
    /// Fail with a message of this many bytes.
    FailLong(usize),
}

/// What a [`Probe`] emits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Out {
    /// The answer to `Double`.
    Doubled(u64),
    /// The answer to `Get`.
    Value {
        /// The remembered value.
        value: i64,
        /// The worker's number.
        worker: usize,
    },
    /// The answer to `WhoAmI`.
    Worker(usize),
    /// One of a sequence.
    Seq(u32),
    /// Never encodable.
    Unencodable(Refuse),
    /// A process id.
    Pid(u32),
    /// The length and FNV-1a hash of the bytes of a `Digest` task.
    Digest(usize, u64),
    /// The answer to `Zeros`.
    Bytes(Vec<u8>),
    /// The answer to `Config`.
    Config(Option<String>),
}

/// The FNV-1a hash of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The suite's worker: a remembered value and a task per behaviour.
#[derive(Debug)]
pub struct Probe {
    value: Cell<i64>,
    /// The worker configuration (a string), decoded in init if the builder gave one.
    config: Option<String>,
}

#[async_trait(?Send)]
impl Worker for Probe {
    type Task = Task;
    type Output = Out;
    type Error = ProbeError;

    fn name() -> &'static str {
        "looppool-testkit/probe"
    }

    async fn init(ctx: &Context<Out>) -> Result<Self, BoxError> {
        // A worker that cannot start while the file named here exists (counted in the file).
        if let Some(marker) = std::env::var_os(FAIL_INIT_VAR) {
            if std::path::Path::new(&marker).exists() {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(&marker)?;
                f.write_all(b"x")?;
                return Err("the init marker says no".into());
            }
        }
        if let Some(marker) = std::env::var_os(SLOW_INIT_VAR) {
            if std::path::Path::new(&marker).exists() {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(&marker)?;
                f.write_all(b"s")?;
                ctx.sleep(std::time::Duration::from_secs(60)).await;
            }
        }
        // A configuration that does not decode as a string fails the init, as it should.
        let config = match ctx.has_config() {
            true => Some(ctx.config::<String>()?),
            false => None,
        };
        Ok(Probe {
            value: Cell::new(0),
            config,
        })
    }

    async fn process(&self, task: Task, ctx: &Context<Out>) -> Result<(), ProbeError> {
        match task {
            Task::Double(n) => ctx.put(Out::Doubled(n * 2)).await?,
            Task::Set(v) => self.value.set(v),
            Task::Get => {
                let out = Out::Value {
                    value: self.value.get(),
                    worker: ctx.worker(),
                };
                ctx.put(out).await?;
            }
            Task::WhoAmI => ctx.put(Out::Worker(ctx.worker())).await?,
            Task::Config => ctx.put(Out::Config(self.config.clone())).await?,
            Task::Fail(message) => return Err(ProbeError::Message(message)),
            Task::FailLong(n) => return Err(ProbeError::Message("x".repeat(n))),
            Task::Refuse(code) => return Err(ProbeError::Refused { code }),
            Task::FailUnencodable => return Err(ProbeError::Unencodable(Refuse)),
            Task::FailUndecodable => return Err(ProbeError::Undecodable(Grumpy)),
            Task::Panic(message) => panic!("{message}"),
            Task::Emit(n) => {
                for i in 0..n {
                    ctx.put(Out::Seq(i)).await?;
                }
            }
            Task::TryEmit { n, accepted } => {
                let mut ok = 0;
                for i in 0..n {
                    match ctx.try_put(Out::Seq(i)) {
                        Ok(()) => ok += 1,
                        Err(PutError::Full(Out::Seq(j))) if j == i => {}
                        Err(e) => {
                            return Err(ProbeError::Message(format!(
                                "try_put {i}: unexpected {e:?}"
                            )))
                        }
                    }
                }
                if ok != accepted {
                    return Err(ProbeError::Message(format!(
                        "try_put accepted {ok} of {n}, expected {accepted}"
                    )));
                }
            }
            Task::Hold => {
                ctx.put(Out::Seq(0)).await?;
                ctx.put(Out::Seq(1)).await?;
            }
            Task::PutUnencodable => match ctx.try_put(Out::Unencodable(Refuse)) {
                Err(PutError::Encode(Out::Unencodable(Refuse), message))
                    if message.contains("cannot encode") =>
                {
                    ctx.put(Out::Doubled(1)).await?;
                }
                other => {
                    return Err(ProbeError::Message(format!(
                        "expected an encode error, got {other:?}"
                    )))
                }
            },
            Task::Unencodable(_) | Task::Blob(_) => {}
            Task::Fault(fault) => ctx.inject_fault(fault),
            Task::Exit(code) => std::process::exit(code),
            Task::CrashOnce(path) => {
                if std::fs::remove_file(&path).is_ok() {
                    std::process::exit(7);
                }
                ctx.put(Out::Doubled(1)).await?;
            }
            Task::Sleep(ms) => ctx.sleep(std::time::Duration::from_millis(ms)).await,
            Task::Spin(ms) => {
                let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            Task::Pid => ctx.put(Out::Pid(std::process::id())).await?,
            Task::Grow(mib) => {
                let block = vec![1u8; mib << 20];
                std::hint::black_box(&block);
                std::mem::forget(block);
            }
            Task::Digest(bytes) => ctx.put(Out::Digest(bytes.len(), fnv1a(&bytes))).await?,
            Task::Log(message) => {
                tracing::info!(answer = 42, "{message}");
                tracing::debug!(target: super::capture::USER_TARGET, "debug: {message}");
            }
            Task::Zeros(n) => ctx.put(Out::Bytes(vec![0; n])).await?,
            Task::Spawn(seconds) => {
                let child = std::process::Command::new("sleep")
                    .arg(seconds.to_string())
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()?;
                ctx.put(Out::Pid(child.id())).await?;
            }
            Task::ForkSleeper(seconds) => {
                ctx.put(Out::Pid(looppool_core::fork_sleeper(seconds)?))
                    .await?
            }
            Task::PutAs(task) => ctx.forged(task).put(Out::Doubled(0)).await?,
            Task::Tick(path) => loop {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                file.write_all(b".")?;
                ctx.sleep(std::time::Duration::from_millis(10)).await;
            },
            Task::EmitAcross { first, file, then } => {
                for i in 0..first {
                    ctx.put(Out::Seq(i)).await?;
                }
                while !std::path::Path::new(&file).exists() {
                    ctx.sleep(std::time::Duration::from_millis(2)).await;
                }
                for i in first..first + then {
                    ctx.put(Out::Seq(i)).await?;
                }
            }
            Task::SpinUntilExists(path) => {
                std::fs::write(format!("{path}.spinning"), b"")?;
                while !std::path::Path::new(&path).exists() {
                    std::hint::spin_loop();
                }
            }
        }
        Ok(())
    }
}
