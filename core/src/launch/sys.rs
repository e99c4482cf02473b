// The only module allowed `unsafe`; see the crate root.
#![allow(unsafe_code)]
//! Everything in this crate that the operating system makes `unsafe`: forking, code run between
//! fork and exec, and adopting raw file descriptors. Each block says why it is sound.

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::{getppid, Pid};
use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// What a new worker process does to itself before it runs any worker code.
#[derive(Debug, Clone)]
pub(crate) struct ChildSetup {
    /// The pool's process; if it is already gone, the child exits at once.
    pub(crate) parent: Pid,
    /// Ignore SIGINT and SIGTERM (they reach the whole process group from a terminal).
    pub(crate) ignore_signals: bool,
    /// The kernel's short name for the process (`comm`, at most 15 bytes).
    pub(crate) comm: CString,
    /// A descriptor that must survive `exec` (the child's end of its link).
    pub(crate) inherit_fd: Option<RawFd>,
    /// A nice value to lower the process's CPU priority to.
    pub(crate) nice: Option<i32>,
}

/// Runs in the child between fork and exec, or right after fork: only async-signal-safe calls
/// (prctl, getppid, sigaction, fcntl, setpriority), no allocation.
fn apply(setup: &ChildSetup) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // Die with the parent even if it is SIGKILLed. The signal is tied to the thread that
        // forked, which is why re-exec launches happen on a thread that never exits.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        let _ = nix::sys::prctl::set_name(&setup.comm);
    }
    // The parent may have died before the death signal was armed.
    if getppid() != setup.parent {
        return Err(io::Error::other(
            "the pool's process exited during the launch",
        ));
    }
    if setup.ignore_signals {
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            // SAFETY: installing SIG_IGN runs no handler code, so it cannot break any
            // invariant of the program; sigaction is async-signal-safe.
            unsafe { signal(sig, SigHandler::SigIgn) }?;
        }
    }
    if let Some(nice) = setup.nice {
        // SAFETY: a plain system call on this process with plain integer arguments; it touches
        // no memory of ours and takes no lock.
        if unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, nice) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if let Some(fd) = setup.inherit_fd {
        // Clear close-on-exec on the link's descriptor only.
        nix::fcntl::fcntl(
            // SAFETY: the descriptor is open for the whole call: the parent keeps its
            // `UnixStream` alive until the spawn returned, and the child is a copy of it.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )?;
    }
    Ok(())
}

/// Makes `command` apply `setup` in the child before it execs.
pub(crate) fn set_pre_exec(command: &mut Command, setup: ChildSetup) {
    // SAFETY: `apply` only makes async-signal-safe system calls and does not allocate; its
    // captured `setup` was built before the fork.
    unsafe {
        command.pre_exec(move || apply(&setup));
    }
}

/// Sets the kernel's short name of the calling thread (the process's, on its main thread).
pub(crate) fn set_name(comm: &std::ffi::CStr) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = nix::sys::prctl::set_name(comm);
}

/// This process's nice value (0 if it cannot be read).
pub(crate) fn own_nice() -> i32 {
    // `getpriority` may return -1 as a valid value: errno tells an error apart.
    nix::errno::Errno::clear();
    // SAFETY: a plain system call about this process with integer arguments; it touches no
    // memory of ours.
    let nice = unsafe { nix::libc::getpriority(nix::libc::PRIO_PROCESS, 0) };
    if nice == -1 && nix::errno::Errno::last_raw() != 0 {
        return 0;
    }
    nice
}

/// The number of threads in this process.
pub(crate) fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Forks a worker process that applies `setup`, closes the descriptors in `close` (the pool's
/// other link ends: a sibling holding another worker's end would hide that worker's death),
/// then runs `body` on a fresh thread and exits with its code. Returns the child's pid.
///
/// Other descriptors stay open: libraries keep process-global ones (tokio's signal pipe, for
/// one) that a runtime built in the child still needs.
///
/// The caller must have checked that this process has exactly one thread.
pub(crate) fn fork_worker(
    setup: &ChildSetup,
    close: &[RawFd],
    body: impl FnOnce() -> i32 + Send + 'static,
) -> io::Result<Pid> {
    use nix::unistd::ForkResult;
    // SAFETY: the caller checked that this process has a single thread, so the child is a
    // complete copy with no lock held by a thread that does not exist in it; it may allocate,
    // spawn threads and run arbitrary code.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            for &fd in close {
                let _ = nix::unistd::close(fd);
            }
            let code = match apply(setup) {
                // A fresh thread has no thread-local state copied from the parent's runtime
                // (a runtime refuses to start inside another one it believes is running).
                Ok(()) => std::thread::spawn(body).join().unwrap_or(101),
                Err(e) => {
                    eprintln!("looppool: worker set-up failed: {e}");
                    1
                }
            };
            // Skip destructors and atexit handlers: they belong to the parent's copy of the
            // program state (buffers, runtimes), which the child must not flush or tear down.
            // SAFETY: `_exit` ends the process immediately; nothing runs after it.
            unsafe { nix::libc::_exit(code) }
        }
    }
}

/// Adopts the link descriptor a parent passed to this re-executed process.
///
/// Returns `None` if `fd` is not an open socket.
pub(crate) fn adopt_link_fd(fd: RawFd) -> Option<UnixStream> {
    // Validate before taking ownership, so that a wrong number in the environment cannot make
    // us close some other descriptor later.
    // SAFETY: borrowed for this call only; fstat on a closed descriptor just fails.
    let stat = nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }).ok()?;
    if stat.st_mode & nix::libc::S_IFMT != nix::libc::S_IFSOCK {
        return None;
    }
    // SAFETY: the descriptor is open, is a socket, and nothing else in this process owns it:
    // it was inherited from the parent for this purpose and named only in our environment.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // It survived `exec` for this process only: programs the worker starts must not inherit
    // it, or they would hold the link open after the worker dies and hide its death.
    nix::fcntl::fcntl(
        &stream,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .ok()?;
    Some(stream)
}

/// A descriptor that turns readable when process `pid` (a child of ours, not yet reaped)
/// exits: a pidfd, on Linux 5.3 and later. `None` where the kernel has none.
pub(crate) fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: a plain system call with integer arguments; it touches no memory of ours.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.as_raw(), 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the kernel just returned this new descriptor (close-on-exec by default), and
        // nothing else owns it.
        Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = pid;
        None
    }
}

/// Forks a child that only sleeps `seconds` and exits, holding every descriptor of this
/// process meanwhile (a worker's link included): what a worker that forks a helper leaves
/// behind when it dies. Returns the child's pid. For the conformance suite only.
#[cfg(feature = "fault-injection")]
pub fn fork_sleeper(seconds: u32) -> io::Result<u32> {
    // SAFETY: the child makes only async-signal-safe calls (sleep, _exit) and touches no state
    // of the program, so forking a multi-threaded process is sound here.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw() as u32),
        nix::unistd::ForkResult::Child => {
            // SAFETY: async-signal-safe calls with plain integer arguments.
            unsafe {
                nix::libc::sleep(seconds);
                nix::libc::_exit(0)
            }
        }
    }
}
