//! The entry point of re-executed worker processes.

use super::{run_worker, sys, Transport, LINK_FD_VAR};
use crate::protocol::read_frame_blocking;
use crate::protocol::{rejection, Handshake, HELLO_READ_LIMIT};
use crate::runtime::Runtime;
use crate::worker::{exit_code, Worker};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

/// A worker type that a re-executed process can run, found by its [`Worker::name`].
///
/// Adapters build these for their runtime (`looppool_tokio::worker::<W>()`); a program lists
/// the worker types it uses in one call to [`init`].
#[derive(Clone, Copy)]
pub struct Entry {
    name: fn() -> &'static str,
    type_name: fn() -> &'static str,
    type_id: fn() -> std::any::TypeId,
    run: fn(Arc<dyn Runtime>, UnixStream, Handshake) -> i32,
    runtime: fn() -> Arc<dyn Runtime>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("name", &(self.name)())
            .finish()
    }
}

impl Entry {
    /// Worker type `W`, run on the runtime `runtime` builds in the worker process.
    pub fn new<W: Worker>(runtime: fn() -> Arc<dyn Runtime>) -> Self {
        Entry {
            name: W::name,
            type_name: std::any::type_name::<W>,
            type_id: std::any::TypeId::of::<W>,
            run: |rt, stream, hs| run_worker::<W>(rt, Transport::Unix(stream), Some(hs)),
            runtime,
        }
    }

    /// The worker name this entry answers to.
    pub fn name(&self) -> &'static str {
        (self.name)()
    }

    pub(crate) fn type_name(&self) -> &'static str {
        (self.type_name)()
    }

    pub(crate) fn type_id(&self) -> std::any::TypeId {
        (self.type_id)()
    }
}

/// Turns this process into a worker if it was started as one; otherwise returns at once.
///
/// Call it first thing in `main`, before anything with side effects, listing every worker
/// type the program starts pools of:
///
/// ```no_run
/// # use looppool_core::{async_trait, BoxError, Context, Failure, Worker};
/// # struct Doubler;
/// # #[async_trait(?Send)]
/// # impl Worker for Doubler {
/// #     type Task = u64;
/// #     type Output = u64;
/// #     type Error = Failure;
/// #     async fn init(_: &Context<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
/// #     async fn process(&self, _: u64, _: &Context<u64>) -> Result<(), Failure> { Ok(()) }
/// # }
/// # fn tokio_runtime() -> std::sync::Arc<dyn looppool_core::Runtime> { unimplemented!() }
/// fn main() {
///     looppool_core::init(&[looppool_core::Entry::new::<Doubler>(tokio_runtime)]);
///     // ... the parent's program ...
/// }
/// ```
///
/// In a worker process this reads the handshake, runs the matching worker on a fresh runtime
/// until its pool stops it or its parent dies, and exits the process. It never returns there.
///
/// It may also be the first line of an `async fn main` under a runtime's attribute
/// (`#[tokio::main]`, `#[async_std::main]`) or inside a `block_on`: the worker's own runtime
/// runs on a thread of its own, never inside the one `main` already started. That runtime then
/// stays idle in worker processes; calling `init` in a plain `main` before any runtime exists
/// spares it.
pub fn init(entries: &[Entry]) {
    start_if_worker(super::registry::merge(entries, []));
}

/// Like [`init`], and the worker types registered with [`register!`](crate::register), wherever
/// they are defined, run on `runtime`. Adapters' `init` is this with their runtime.
///
/// # Panics
///
/// In the parent, if two different worker types share a name (in a worker process, the
/// handshake is refused with that error instead).
pub fn init_with_registered(entries: &[Entry], runtime: fn() -> Arc<dyn Runtime>) {
    start_if_worker(super::registry::merge(
        entries,
        super::registry::registered(runtime),
    ));
}

/// Runs the worker if this process is one; panics in the parent on a clash of names.
fn start_if_worker(entries: Result<Vec<Entry>, String>) {
    match entries {
        Ok(all) => run_if_worker(&all),
        Err(reason) if std::env::var_os(LINK_FD_VAR).is_some() => refuse(&reason),
        Err(reason) => panic!("looppool: {reason}"),
    }
}

/// Ends this process as a worker whose handshake is refused for `reason`.
fn refuse(reason: &str) -> ! {
    let code = match adopt() {
        Some(mut stream) => {
            let _ = stream.write_all(&rejection(reason));
            eprintln!("looppool worker: {reason}");
            exit_code::HANDSHAKE
        }
        None => exit_code::HANDSHAKE,
    };
    std::process::exit(code)
}

/// The link this process inherited as a worker, taken from the environment.
fn adopt() -> Option<UnixStream> {
    let fd = std::env::var_os(LINK_FD_VAR)?;
    std::env::remove_var(LINK_FD_VAR);
    fd.to_str()
        .and_then(|s| s.parse().ok())
        .and_then(sys::adopt_link_fd)
}

fn run_if_worker(entries: &[Entry]) {
    let Some(fd) = std::env::var_os(LINK_FD_VAR) else {
        return;
    };
    // Programs this worker starts must not believe they are workers too.
    std::env::remove_var(LINK_FD_VAR);
    let code = match fd
        .to_str()
        .and_then(|s| s.parse().ok())
        .and_then(sys::adopt_link_fd)
    {
        Some(stream) => run_entry(entries, stream),
        None => {
            eprintln!("looppool: {LINK_FD_VAR}={fd:?} does not name an inherited socket");
            exit_code::HANDSHAKE
        }
    };
    std::process::exit(code);
}

fn run_entry(entries: &[Entry], mut stream: UnixStream) -> i32 {
    let hello = read_frame_blocking(&mut stream, HELLO_READ_LIMIT);
    if let Err(crate::protocol::FrameError::Truncated { got: 0, .. }) = hello {
        // The parent hung up before saying anything: it gave up on this launch.
        return exit_code::OK;
    }
    let handshake = hello
        .map_err(|e| format!("cannot read the handshake: {e}"))
        .and_then(|body| Handshake::decode(&body));
    let handshake =
        handshake.and_then(
            |hs| match entries.iter().find(|e| e.name() == hs.worker_name) {
                Some(entry) => Ok((hs, entry)),
                None => {
                    let known: Vec<_> = entries.iter().map(Entry::name).collect();
                    Err(format!(
                        "worker type `{}` is not registered in this executable's looppool init() \
                     (registered: {known:?})",
                        hs.worker_name
                    ))
                }
            },
        );
    match handshake {
        Ok((hs, entry)) => {
            // `exec` reset the short name to the executable's; set it again (the process's name
            // is its main thread's).
            let name = super::comm_name(hs.worker, &hs.pool_name);
            sys::set_name(&name);
            run_on_own_thread(*entry, name.to_string_lossy().into_owned(), stream, hs)
        }
        Err(reason) => {
            let _ = stream.write_all(&rejection(&reason));
            eprintln!("looppool worker: {reason}");
            exit_code::HANDSHAKE
        }
    }
}

/// Runs the worker on a thread of its own: the calling thread may already be inside a runtime
/// (an `async fn main` under `#[tokio::main]`), where building another one panics.
fn run_on_own_thread(entry: Entry, name: String, stream: UnixStream, hs: Handshake) -> i32 {
    let worker = std::thread::Builder::new()
        .name(name)
        .spawn(move || (entry.run)((entry.runtime)(), stream, hs));
    match worker.map(|thread| thread.join()) {
        Ok(Ok(code)) => code,
        Ok(Err(_)) => exit_code::LINK,
        Err(e) => {
            eprintln!("looppool worker: cannot start its thread: {e}");
            exit_code::HANDSHAKE
        }
    }
}
