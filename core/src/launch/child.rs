//! A launched worker, as its pool sees it: something to kill, and an exit status to collect.

use crate::error::Exit;
use crate::pipe::PipeCloser;
use crate::runtime::{BoxFuture, Runtime};
use futures_channel::oneshot;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A worker process. Killing and reaping take the same lock, and a reaped pid is never signalled
/// again, so a pid the kernel reused for an unrelated process can never be killed by mistake.
#[derive(Debug)]
pub(crate) struct Process {
    pid: Pid,
    reaped: Mutex<Option<Exit>>,
    /// Readable once the process has exited (Linux), to see its death without its link.
    pidfd: Option<OwnedFd>,
}

impl Process {
    pub(crate) fn new(pid: Pid) -> Arc<Self> {
        Arc::new(Self {
            pid,
            reaped: Mutex::new(None),
            pidfd: super::sys::pidfd_open(pid),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Exit>> {
        self.reaped.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kill(&self) {
        let reaped = self.lock();
        if reaped.is_none() {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }

    fn try_reap(&self, block: bool) -> Option<Exit> {
        let mut reaped = self.lock();
        if let Some(exit) = *reaped {
            return Some(exit);
        }
        let flags = (!block).then_some(WaitPidFlag::WNOHANG);
        let exit = match waitpid(self.pid, flags) {
            Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal(sig as i32),
            Ok(_) => return None,
            Err(_) => Exit::Unknown,
        };
        *reaped = Some(exit);
        Some(exit)
    }
}

/// Ends a worker from outside. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) enum Killer {
    Process(Arc<Process>),
    Thread(PipeCloser),
}

impl Killer {
    /// SIGKILL for a process; for a thread, both ends of its pipe are closed, so it stops at
    /// its next await.
    pub(crate) fn kill(&self) {
        match self {
            Killer::Process(p) => p.kill(),
            Killer::Thread(closer) => closer.close(),
        }
    }

    /// Kills and, for a process, waits for it to be gone; returns its exit status (`None` for
    /// a thread). Used when the pool is dropped and when a launch fails.
    pub(crate) fn kill_and_reap_blocking(&self) -> Option<Exit> {
        self.kill();
        match self {
            Killer::Process(p) => p.try_reap(true),
            Killer::Thread(_) => None,
        }
    }
}

/// Collects a worker's exit status.
#[derive(Debug)]
pub(crate) enum Reaper {
    Process(Arc<Process>),
    Thread(oneshot::Receiver<Exit>),
}

impl Reaper {
    /// Completes once the worker has exited, without reaping it: through its pidfd where the
    /// kernel and the runtime allow, else by polling its status (which collects it early; the
    /// status is kept for [`reap`](Self::reap)). Never completes for a thread worker, whose end
    /// closes its link.
    pub(crate) fn exited(&self, runtime: &Arc<dyn Runtime>) -> BoxFuture<()> {
        let Reaper::Process(p) = self else {
            return Box::pin(std::future::pending());
        };
        let watched = p
            .pidfd
            .as_ref()
            .and_then(|fd| fd.try_clone().ok())
            .and_then(|fd| runtime.wait_readable(fd));
        let (p, runtime) = (p.clone(), runtime.clone());
        Box::pin(async move {
            if let Some(readable) = watched {
                if readable.await.is_ok() {
                    return;
                }
            }
            let mut pause = Duration::from_millis(10);
            while p.try_reap(false).is_none() {
                runtime.sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        })
    }

    /// Waits for the worker to exit. Called once its link has ended, when the process is
    /// exiting or has exited; the short backoff only covers the moment between a process
    /// closing its descriptors and the kernel reporting its status.
    pub(crate) async fn reap(&mut self, runtime: &dyn Runtime) -> Exit {
        match self {
            Reaper::Process(p) => {
                let mut pause = Duration::from_micros(100);
                loop {
                    if let Some(exit) = p.try_reap(false) {
                        return exit;
                    }
                    runtime.sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
            Reaper::Thread(rx) => rx.await.unwrap_or(Exit::Unknown),
        }
    }
}
