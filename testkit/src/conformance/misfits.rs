//! Workers that fail on purpose: an init that fails, an init that exits, and outputs whose
//! decoding panics in the parent.

use looppool_core::{async_trait, BoxError, Context, Failure, Worker};
use serde::{Deserialize, Serialize};

/// A worker whose init hook fails.
#[derive(Debug)]
pub struct FailingInit;

#[async_trait(?Send)]
impl Worker for FailingInit {
    type Task = ();
    type Output = ();
    type Error = Failure;

    fn name() -> &'static str {
        "looppool-testkit/failing-init"
    }

    async fn init(_ctx: &Context<()>) -> Result<Self, BoxError> {
        Err("no database at db.invalid".into())
    }

    async fn process(&self, _: (), _: &Context<()>) -> Result<(), Failure> {
        Ok(())
    }
}

/// A worker whose init hook ends its process with exit code 9.
#[derive(Debug)]
pub struct ExitingInit;

#[async_trait(?Send)]
impl Worker for ExitingInit {
    type Task = ();
    type Output = ();
    type Error = Failure;

    fn name() -> &'static str {
        "looppool-testkit/exiting-init"
    }

    async fn init(_ctx: &Context<()>) -> Result<Self, BoxError> {
        std::process::exit(9)
    }

    async fn process(&self, _: (), _: &Context<()>) -> Result<(), Failure> {
        Ok(())
    }
}

/// The value whose decoding panics in the parent.
pub const TOUCHY_PANIC: u32 = 666;

/// [`Touchy`] values decoded in this process and not yet dropped.
pub static TOUCHY_LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// An output that counts its decoded copies ([`TOUCHY_LIVE`]) and whose decoding panics on
/// [`TOUCHY_PANIC`], as a user's `Deserialize` might.
#[derive(Debug)]
pub struct Touchy {
    /// The value.
    pub value: u32,
    /// 64 KiB, so that a leak would show.
    pub ballast: Vec<u8>,
    decoded: bool,
}

impl Touchy {
    /// A value to emit.
    pub fn new(value: u32) -> Self {
        Touchy {
            value,
            ballast: vec![7; 64 << 10],
            decoded: false,
        }
    }
}

impl Serialize for Touchy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.value, &self.ballast).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (value, ballast) = <(u32, Vec<u8>)>::deserialize(d)?;
        if value == TOUCHY_PANIC {
            panic!("Touchy refuses to decode {value}");
        }
        TOUCHY_LIVE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Touchy {
            value,
            ballast,
            decoded: true,
        })
    }
}

impl Drop for Touchy {
    fn drop(&mut self) {
        if self.decoded {
            TOUCHY_LIVE.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A worker that emits [`Touchy`] outputs: a task `(value, n)` emits `n` of `value`.
#[derive(Debug)]
pub struct TouchyWorker;

#[async_trait(?Send)]
impl Worker for TouchyWorker {
    type Task = (u32, u32);
    type Output = Touchy;
    type Error = Failure;

    fn name() -> &'static str {
        "looppool-testkit/touchy"
    }

    async fn init(_ctx: &Context<Touchy>) -> Result<Self, BoxError> {
        Ok(TouchyWorker)
    }

    async fn process(&self, (value, n): (u32, u32), ctx: &Context<Touchy>) -> Result<(), Failure> {
        for _ in 0..n {
            ctx.put(Touchy::new(value)).await?;
        }
        Ok(())
    }
}
