//! [`Failure`]: the error type of workers whose failures are text.

use super::{error_chain, BoxError};
use std::fmt;

/// The error type of a worker whose failures are text: any `std::error::Error` converts into it
/// with `?` (keeping its chain of sources, `outer: inner`), and [`Failure::msg`] makes one from
/// a message. It crosses the process boundary as its text.
///
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself (that would clash
/// with the conversion from every error); [`TaskError`](crate::TaskError) and
/// [`CallError`](crate::CallError) do.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Failure(String);

impl Failure {
    /// A failure with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Failure(message.to_string())
    }

    /// A failure from a boxed error (which `?` cannot convert: a `Box<dyn Error>` is not an
    /// `Error` itself), keeping its chain of sources.
    pub fn from_boxed(e: BoxError) -> Self {
        Failure(error_chain(&*e))
    }

    /// The failure's text.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(error_chain(&e))
    }
}

/// So that `?` turns a `Failure` into the [`BoxError`] that `init` returns.
impl From<Failure> for BoxError {
    fn from(f: Failure) -> Self {
        f.0.into()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
