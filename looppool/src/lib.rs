//! **looppool**: a pool of worker processes, each driving its own async event loop, fed by a
//! parent process that keeps its own loop responsive. CPU-heavy work, or work tightly coupled to
//! an event loop, runs in the workers; the parent submits tasks and reads their outputs.
//!
//! This crate is the one to depend on in a program: pick the runtime with a Cargo feature
//! (`tokio`, the default; `smol`; `async-std`) and use [`init`], [`builder`] and the whole API
//! from here. Libraries that must stay runtime-neutral depend on `looppool-core` instead.
//!
//! | feature | what |
//! |---|---|
//! | `tokio` (default) | parent and workers on tokio |
//! | `smol` | on smol (`looppool::rt::smol`, and the unqualified API when `tokio` is off) |
//! | `async-std` | on async-std (discontinued upstream; prefer smol) |
//! | `nats` | scale-out over NATS JetStream: [`nats`] |
//! | `tower` | [`Pool`] as a `tower::Service` |
//!
//! With several runtime features, the unqualified [`init`], [`builder`], [`worker`] and
//! [`runtime`] are tokio's, else smol's, else async-std's, and [`RUNTIME`] names which; every
//! enabled runtime is also a module of its own, in [`rt`].
//!
//! ```no_run
//! use looppool::{async_trait, BoxError, Context, Failure, Worker};
//!
//! struct Doubler;
//!
//! #[async_trait(?Send)]
//! impl Worker for Doubler {
//!     type Task = u64;
//!     type Output = u64;
//!     type Error = Failure;
//!
//!     async fn init(_ctx: &Context<u64>) -> Result<Self, BoxError> {
//!         Ok(Doubler)
//!     }
//!
//!     async fn process(&self, n: u64, ctx: &Context<u64>) -> Result<(), Failure> {
//!         ctx.put(n * 2).await?;
//!         Ok(())
//!     }
//! }
//!
//! fn main() {
//!     looppool::init(&[looppool::worker::<Doubler>()]);
//!     # #[cfg(feature = "tokio")]
//!     tokio::runtime::Runtime::new().unwrap().block_on(async {
//!         let pool = looppool::builder::<Doubler>().workers(4).start().await.unwrap();
//!         assert_eq!(pool.call(21).await.unwrap(), 42);
//!         pool.stop().await;
//!     });
//! }
//! ```
#![forbid(unsafe_code)]

#[cfg(not(any(feature = "tokio", feature = "smol", feature = "async-std")))]
compile_error!("looppool needs a runtime: enable one of the features `tokio`, `smol`, `async-std`");

pub use looppool_core::*;

/// Each enabled runtime's binding, by name: `looppool::rt::smol::builder`, and the rest of the
/// API for that runtime. A module of its own, so that `use looppool::*` brings no name that
/// clashes with the runtime crates themselves.
pub mod rt {
    /// The tokio binding.
    #[cfg(feature = "tokio")]
    pub use looppool_tokio as tokio;

    /// The smol binding.
    #[cfg(feature = "smol")]
    pub use looppool_smol as smol;

    /// The async-std binding.
    #[cfg(feature = "async-std")]
    pub use looppool_async_std as async_std;
}

/// Scale-out over NATS JetStream: members on many hosts join a pool.
#[cfg(feature = "nats")]
pub use looppool_nats as nats;

#[cfg(feature = "tokio")]
use looppool_tokio as chosen;

#[cfg(all(feature = "smol", not(feature = "tokio")))]
use looppool_smol as chosen;

#[cfg(all(feature = "async-std", not(any(feature = "tokio", feature = "smol"))))]
use looppool_async_std as chosen;

/// The runtime of the unqualified API: `"tokio"`, `"smol"` or `"async-std"`.
#[cfg(feature = "tokio")]
pub const RUNTIME: &str = "tokio";
/// The runtime of the unqualified API: `"tokio"`, `"smol"` or `"async-std"`.
#[cfg(all(feature = "smol", not(feature = "tokio")))]
pub const RUNTIME: &str = "smol";
/// The runtime of the unqualified API: `"tokio"`, `"smol"` or `"async-std"`.
#[cfg(all(feature = "async-std", not(any(feature = "tokio", feature = "smol"))))]
pub const RUNTIME: &str = "async-std";

/// Turns this process into a worker if it was started as one; otherwise returns at once. Call
/// it first thing in `main`. It runs the worker types listed and every type registered with
/// [`register!`], on the chosen runtime ([`RUNTIME`]).
///
/// # Panics
///
/// If two different worker types share a [`Worker::name`].
#[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]
pub fn init(entries: &[Entry]) {
    chosen::init(entries);
}

/// A pool builder whose parent side runs on the chosen runtime ([`RUNTIME`]).
#[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]
pub fn builder<W: Worker>() -> Builder<W> {
    chosen::builder::<W>()
}

/// The [`Entry`] that runs worker `W` on the chosen runtime in a re-executed process; list it
/// in [`init`] (or register `W` with [`register!`]).
#[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]
pub fn worker<W: Worker>() -> Entry {
    chosen::worker::<W>()
}

/// The chosen runtime's binding, for [`Pool::builder`] and runtime-neutral libraries.
#[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]
pub fn runtime() -> std::sync::Arc<dyn Runtime> {
    chosen::runtime()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Doubler;

    #[async_trait(?Send)]
    impl Worker for Doubler {
        type Task = u64;
        type Output = u64;
        type Error = Failure;

        async fn init(_: &Context<u64>) -> Result<Self, BoxError> {
            Ok(Doubler)
        }

        async fn process(&self, n: u64, ctx: &Context<u64>) -> Result<(), Failure> {
            ctx.put(n * 2).await?;
            Ok(())
        }
    }

    /// A pool of thread workers on the chosen runtime answers; `RUNTIME` says which it is.
    #[test]
    fn the_unqualified_api_runs_on_the_chosen_runtime() {
        let expected = if cfg!(feature = "tokio") {
            "tokio"
        } else if cfg!(feature = "smol") {
            "smol"
        } else {
            "async-std"
        };
        assert_eq!(RUNTIME, expected);
        let run = async {
            let pool = builder::<Doubler>()
                .start_method(StartMethod::Thread)
                .workers(2)
                .start()
                .await
                .expect("the pool starts");
            let answer = pool.call(21).await;
            assert!(pool.stop().await.is_graceful());
            answer
        };
        let answer = if cfg!(feature = "tokio") {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(run)
        } else {
            // smol's and async-std's reactors run on threads of their own.
            futures_executor::block_on(run)
        };
        assert_eq!(answer.expect("an answer"), 42);
    }
}
