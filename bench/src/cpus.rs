//! Which CPUs the benchmark's processes may use: the latency floor is the best the machine can
//! do, and on a VM that is often with both processes on one CPU, where a wake-up costs no
//! cross-CPU interrupt.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs this thread may use now.
pub(crate) fn current() -> nix::Result<CpuSet> {
    sched_getaffinity(Pid::from_raw(0))
}

/// Only CPU `cpu`.
pub(crate) fn only(cpu: usize) -> nix::Result<CpuSet> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    Ok(set)
}

/// Restricts every thread of this process to `cpus`; processes and threads it starts from now
/// on inherit that.
pub(crate) fn pin_self(cpus: &CpuSet) -> std::io::Result<()> {
    for entry in std::fs::read_dir("/proc/self/task")? {
        let name = entry?.file_name();
        let Ok(tid) = name.to_string_lossy().parse::<i32>() else {
            continue;
        };
        // A thread may end between the listing and the call.
        match sched_setaffinity(Pid::from_raw(tid), cpus) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
