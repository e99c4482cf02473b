//! Starting worker processes (or threads) and handing back their transports.
//!
//! - [`StartMethod::ReExec`] (the default) runs the current executable again; its `main` calls
//!   [`init`](crate::init) first thing, which recognises the worker process and never returns.
//!   Safe from any state of the parent, threads and runtimes included.
//! - [`StartMethod::Fork`] forks the parent, so workers see everything it prepared before the
//!   pool started, without serialising it. Only sound while the process has one thread, which
//!   is checked: otherwise the start fails with [`Error::ForkUnsafe`](crate::Error::ForkUnsafe).
//!   A forked worker closes the pool's other link ends but inherits the parent's other open
//!   descriptors (a listening socket, say) and libraries' process-global state; use re-exec
//!   when workers must not share those.
//! - [`StartMethod::Thread`] runs each worker on a thread of the parent over an in-memory pipe:
//!   no isolation, for tests and for environments that forbid processes.

mod child;
mod entry;
mod registry;
mod sys;

pub(crate) use child::{Killer, Process, Reaper};
pub use entry::{init, init_with_registered, Entry};
#[doc(hidden)]
pub use registry::Registration;
#[cfg(feature = "fault-injection")]
pub use sys::fork_sleeper;
pub(crate) use sys::own_nice;

use crate::error::{Error, Exit};
use crate::pipe::{duplex, PipeEnd};
use crate::protocol::Handshake;
use crate::runtime::{BoxIo, Runtime};
use crate::worker::{serve, DirectSink, Worker};
use futures_channel::oneshot;
use std::cell::Cell;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use sys::ChildSetup;

/// The environment variable that tells a re-executed process which descriptor is its link.
pub(crate) const LINK_FD_VAR: &str = "LOOPPOOL_WORKER_FD";

/// How worker processes are started.
///
/// Re-exec is the default: safe from any state of the parent. Fork shares what the parent
/// prepared before the pool started, but is only sound while the process has one thread (it
/// is refused otherwise) and leaves the parent's other descriptors open in the workers. Threads
/// give no isolation at all and exist for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartMethod {
    /// Run the current executable again (its `main` must call [`init`](crate::init) first).
    #[default]
    ReExec,
    /// Fork the parent; refused unless the process has exactly one thread.
    Fork,
    /// Threads of the parent over in-memory pipes; no process isolation.
    Thread,
}

/// A worker's link as launched, before the parent's runtime wraps it.
pub(crate) enum Transport {
    Unix(UnixStream),
    Pipe(PipeEnd),
}

impl Transport {
    pub(crate) fn into_io(self, runtime: &dyn Runtime) -> io::Result<BoxIo> {
        match self {
            Transport::Unix(s) => {
                s.set_nonblocking(true)?;
                runtime.wrap_unix(s)
            }
            Transport::Pipe(p) => Ok(Box::new(p)),
        }
    }

    /// A second way to write the link, for a worker's flusher thread.
    pub(crate) fn direct_sink(&self) -> io::Result<DirectSink> {
        Ok(match self {
            Transport::Unix(s) => DirectSink::Socket(s.try_clone()?),
            Transport::Pipe(p) => DirectSink::Pipe(p.sender()),
        })
    }
}

/// One launched worker.
pub(crate) struct Launched {
    pub(crate) transport: Transport,
    pub(crate) killer: Killer,
    pub(crate) reaper: Reaper,
}

impl Launched {
    /// A second handle on the parent's end of a socket link, for writes from outside the
    /// link's tasks; `None` for a pipe, or when the descriptor table is full.
    pub(crate) fn parent_sender(&self) -> Option<UnixStream> {
        match &self.transport {
            Transport::Unix(s) => s.try_clone().ok(),
            Transport::Pipe(_) => None,
        }
    }

    /// The parent's end of the link, as a descriptor (none for thread workers).
    pub(crate) fn parent_fd(&self) -> Option<RawFd> {
        match &self.transport {
            Transport::Unix(s) => Some(s.as_raw_fd()),
            Transport::Pipe(_) => None,
        }
    }
}

/// What every launch needs to know.
#[derive(Debug, Clone)]
pub(crate) struct LaunchOptions {
    pub(crate) pool_name: String,
    pub(crate) ignore_signals: bool,
    pub(crate) nice: Option<i32>,
    pub(crate) worker_runtime: Arc<dyn Runtime>,
}

impl LaunchOptions {
    fn title(&self, worker: usize) -> String {
        format!("looppool: {} worker {worker}", self.pool_name)
    }

    fn setup(&self, worker: usize, inherit_fd: Option<i32>) -> ChildSetup {
        ChildSetup {
            parent: nix::unistd::getpid(),
            ignore_signals: self.ignore_signals,
            comm: comm_name(worker, &self.pool_name),
            inherit_fd,
            nice: self.nice,
        }
    }
}

/// The kernel's short name for a worker process (`comm`, shown by `top` and `ps -o comm`).
/// The kernel keeps 15 bytes of it, so the worker number goes first, where it survives.
pub(crate) fn comm_name(worker: usize, pool_name: &str) -> CString {
    let mut comm = format!("lp{worker}-{pool_name}").into_bytes();
    comm.retain(|&b| b != 0);
    comm.truncate(15);
    CString::new(comm).expect("NUL bytes were removed")
}

/// Launches workers `0..n` of type `W`. Each one's killer goes to `spawned` as soon as it
/// exists, so that a caller dropped half-way can still kill what was launched.
pub(crate) async fn launch_all<W: Worker>(
    method: StartMethod,
    n: usize,
    opts: &LaunchOptions,
    spawned: &mut Vec<Killer>,
) -> Result<Vec<Launched>, Error> {
    let launched = match method {
        StartMethod::ReExec => {
            let mut launched = Vec::with_capacity(n);
            for worker in 0..n {
                match reexec(worker, opts).await {
                    Ok(l) => {
                        spawned.push(l.killer.clone());
                        launched.push(l)
                    }
                    Err(source) => {
                        kill_all(&launched);
                        return Err(Error::Launch { worker, source });
                    }
                }
            }
            Ok(launched)
        }
        StartMethod::Fork => fork_all::<W>(n, opts),
        StartMethod::Thread => (0..n)
            .map(|worker| {
                thread::<W>(worker, opts).map_err(|source| Error::Launch { worker, source })
            })
            .collect(),
    }?;
    if method != StartMethod::ReExec {
        spawned.extend(launched.iter().map(|l| l.killer.clone()));
    }
    Ok(launched)
}

/// Launches one replacement for worker `worker`. A forked replacement closes `link_fds`, the
/// parent's ends of the other workers' links.
pub(crate) async fn launch_one<W: Worker>(
    method: StartMethod,
    worker: usize,
    opts: &LaunchOptions,
    link_fds: &[RawFd],
) -> Result<Launched, Error> {
    let launched = match method {
        StartMethod::Thread => thread::<W>(worker, opts),
        StartMethod::Fork => {
            let threads = sys::thread_count().map_err(|source| Error::Launch { worker, source })?;
            if threads != 1 {
                return Err(Error::ForkUnsafe { threads });
            }
            fork_one::<W>(worker, opts, link_fds)
        }
        _ => reexec(worker, opts).await,
    };
    launched.map_err(|source| Error::Launch { worker, source })
}

fn kill_all(launched: &[Launched]) {
    for l in launched {
        l.killer.kill_and_reap_blocking();
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the launcher thread: a thread that lives as long as the process, so the
/// parent-death signal of the workers it starts (which Linux ties to the *thread* that forked
/// them) fires only when the whole process dies.
fn on_launcher_thread(job: Job) -> io::Result<()> {
    static LAUNCHER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let sender = LAUNCHER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("looppool-launcher".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("cannot start the looppool launcher thread");
        Mutex::new(tx)
    });
    let sender = sender.lock().unwrap_or_else(|e| e.into_inner());
    sender
        .send(job)
        .map_err(|_| io::Error::other("the looppool launcher thread has stopped"))
}

async fn reexec(worker: usize, opts: &LaunchOptions) -> io::Result<Launched> {
    let (parent_end, child_end) = UnixStream::pair()?;
    let fd = child_end.as_raw_fd();
    let mut command = Command::new(if cfg!(target_os = "linux") {
        "/proc/self/exe".into()
    } else {
        std::env::current_exe()?
    });
    command
        .arg0(opts.title(worker))
        .env(LINK_FD_VAR, fd.to_string())
        .stdin(Stdio::null());
    sys::set_pre_exec(&mut command, opts.setup(worker, Some(fd)));
    let (tx, rx) = oneshot::channel();
    on_launcher_thread(Box::new(move || {
        let spawned = command.spawn();
        // The child has its copy; ours must close so that the parent sees the child's death.
        drop(child_end);
        // Nobody may wait for it any more (the start or the pool was dropped, before or after
        // this send): the guard kills and reaps it unless the launch takes it.
        let _ = tx.send(spawned.map(|child| Unclaimed(Some(child))));
    }))?;
    let child = rx
        .await
        .map_err(|_| io::Error::other("the launcher dropped the request"))??
        .take();
    let process = Process::new(nix::unistd::Pid::from_raw(child.id() as i32));
    // `std::process::Child` does not kill or wait on drop; the pool reaps the pid itself.
    drop(child);
    Ok(Launched {
        transport: Transport::Unix(parent_end),
        killer: Killer::Process(process.clone()),
        reaper: Reaper::Process(process),
    })
}

/// A child the launcher spawned, killed and reaped when dropped unless the launch took it.
struct Unclaimed(Option<std::process::Child>);

impl Unclaimed {
    fn take(mut self) -> std::process::Child {
        self.0.take().expect("taken once")
    }
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn fork_all<W: Worker>(n: usize, opts: &LaunchOptions) -> Result<Vec<Launched>, Error> {
    let threads = sys::thread_count().map_err(|source| Error::Launch { worker: 0, source })?;
    if threads != 1 {
        return Err(Error::ForkUnsafe { threads });
    }
    let mut launched: Vec<Launched> = Vec::with_capacity(n);
    for worker in 0..n {
        let earlier: Vec<RawFd> = launched.iter().filter_map(Launched::parent_fd).collect();
        match fork_one::<W>(worker, opts, &earlier) {
            Ok(l) => launched.push(l),
            Err(source) => {
                kill_all(&launched);
                return Err(Error::Launch { worker, source });
            }
        }
    }
    Ok(launched)
}

/// Forks worker `worker`. The child closes `link_fds` (the parent's ends of other links) and
/// the parent's end of its own. The caller checked that the process has a single thread.
fn fork_one<W: Worker>(
    worker: usize,
    opts: &LaunchOptions,
    link_fds: &[RawFd],
) -> io::Result<Launched> {
    // Whatever the parent buffered would otherwise be written again by the child.
    let _ = io::Write::flush(&mut io::stdout());
    let (parent_end, child_end) = UnixStream::pair()?;
    let mut close = link_fds.to_vec();
    close.push(parent_end.as_raw_fd());
    let runtime = opts.worker_runtime.clone();
    let pid = sys::fork_worker(&opts.setup(worker, None), &close, move || {
        run_worker::<W>(runtime, Transport::Unix(child_end), None)
    })?;
    let process = Process::new(pid);
    Ok(Launched {
        transport: Transport::Unix(parent_end),
        killer: Killer::Process(process.clone()),
        reaper: Reaper::Process(process),
    })
}

fn thread<W: Worker>(worker: usize, opts: &LaunchOptions) -> io::Result<Launched> {
    let (parent_end, child_end, closer) = duplex(256 * 1024);
    let runtime = opts.worker_runtime.clone();
    let (tx, rx) = oneshot::channel();
    opts.worker_runtime.spawn_worker_thread(
        format!("looppool-{}-{worker}", opts.pool_name),
        Box::new(move || {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_worker::<W>(runtime, Transport::Pipe(child_end), None)
            }));
            let _ = tx.send(Exit::Thread {
                panicked: run.is_err(),
            });
        }),
    )?;
    Ok(Launched {
        transport: Transport::Pipe(parent_end),
        killer: Killer::Thread(closer),
        reaper: Reaper::Thread(rx),
    })
}

/// Runs worker `W` on a fresh runtime on this thread until its link ends; returns its exit code.
pub(crate) fn run_worker<W: Worker>(
    runtime: Arc<dyn Runtime>,
    transport: Transport,
    handshake: Option<Handshake>,
) -> i32 {
    let code = Rc::new(Cell::new(crate::worker::exit_code::LINK));
    let out = code.clone();
    let rt = runtime.clone();
    runtime.block_on_local(Box::pin(async move {
        let sink = match rt.worker_flusher() {
            true => match transport.direct_sink() {
                Ok(sink) => Some(sink),
                Err(e) => {
                    eprintln!("looppool worker: cannot use the link: {e}");
                    return;
                }
            },
            false => None,
        };
        match transport.into_io(&*rt) {
            Ok(io) => out.set(serve::<W>(io, sink, handshake, rt).await),
            Err(e) => eprintln!("looppool worker: cannot use the link: {e}"),
        }
    }));
    code.get()
}
