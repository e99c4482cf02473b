//! The pool's secret, and messages sealed with it.
//!
//! Every message of a pool carries an HMAC-SHA256 tag over the message and the subject it is
//! meant for, keyed with a secret the parent and its members share. A client of the same NATS
//! server without the secret can publish on the pool's subjects but cannot make a message the
//! pool accepts, nor move a sealed message to another subject. What a holder of the secret may
//! publish is the server's to limit: see [`Permissions`](crate::Permissions).

use crate::error::Error;
use crate::wire;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable [`Secret::from_env`] reads, and builders fall back to.
pub const SECRET_VAR: &str = "LOOPPOOL_NATS_SECRET";

/// Bytes of the tag appended to every message.
const TAG: usize = 32;

/// The secret a pool's parent and members share: only holders of it can act on the pool.
///
/// Give the parent and every member the same secret: [`Builder::secret`](crate::Builder::secret)
/// and [`Member::secret`](crate::Member::secret), or the environment variable
/// `LOOPPOOL_NATS_SECRET` both fall back to. Generate one with [`Secret::generate`] (or
/// `openssl rand -hex 32`) and hand it to the hosts as you would a password.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Fewest bytes a secret may have.
    pub const MIN_LEN: usize = 16;

    /// A secret of these bytes (at least [`MIN_LEN`](Self::MIN_LEN)): a passphrase, or the
    /// text [`generate`](Self::generate) returned.
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, Error> {
        let bytes = bytes.as_ref();
        if bytes.len() < Self::MIN_LEN {
            return Err(Error::Config(format!(
                "the pool secret has {} bytes; it needs at least {}",
                bytes.len(),
                Self::MIN_LEN
            )));
        }
        Ok(Self(bytes.to_vec()))
    }

    /// A new random secret: 32 random bytes as 64 hexadecimal digits, the text to hand to
    /// [`new`](Self::new) on every host (see [`expose`](Self::expose)).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system's random number generator");
        Self(hex(&bytes).into_bytes())
    }

    /// The secret from the environment variable `LOOPPOOL_NATS_SECRET`.
    pub fn from_env() -> Result<Self, Error> {
        match std::env::var_os(SECRET_VAR) {
            Some(value) => Self::new(value.as_encoded_bytes()).map_err(|e| match e {
                Error::Config(why) => Error::Config(format!("{SECRET_VAR}: {why}")),
                other => other,
            }),
            None => Err(Error::Config(format!(
                "no pool secret: give the same one to the parent and every member with \
                 `.secret(…)` or the environment variable {SECRET_VAR} (make one with \
                 `looppool_nats::Secret::generate()` or `openssl rand -hex 32`)"
            ))),
        }
    }

    /// The secret's bytes, to hand to the other hosts.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A random number, to tell runs apart.
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random number generator");
    u64::from_le_bytes(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seals and opens a pool's messages.
#[derive(Clone)]
pub(crate) struct Sealer {
    key: hmac::Key,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer")
    }
}

impl Sealer {
    pub(crate) fn new(secret: &Secret) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret.0),
        }
    }

    /// `body` with a tag binding it to `context` (the subject it is sent on).
    pub(crate) fn seal(&self, context: &str, mut body: Vec<u8>) -> Vec<u8> {
        let tag = hmac::sign(&self.key, &signing_input(context, &body));
        body.extend_from_slice(tag.as_ref());
        body
    }

    /// The body of `message` if it was sealed for `context` with this pool's secret.
    pub(crate) fn open<'m>(&self, context: &str, message: &'m [u8]) -> Option<&'m [u8]> {
        let split = message.len().checked_sub(TAG)?;
        let (body, tag) = message.split_at(split);
        // `verify` compares in constant time.
        hmac::verify(&self.key, &signing_input(context, body), tag)
            .ok()
            .map(|()| body)
    }
}

/// Why a message was not accepted.
#[derive(Debug)]
pub(crate) enum Unsealed {
    /// Not sealed for its subject with this pool's secret.
    Forged,
    /// Sealed, and not a message of this version.
    Garbled(String),
}

impl fmt::Display for Unsealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsealed::Forged => f.write_str("not sealed with the pool's secret for its subject"),
            Unsealed::Garbled(e) => write!(f, "undecodable: {e}"),
        }
    }
}

impl Sealer {
    /// `value` encoded and sealed for `subject`.
    pub(crate) fn pack<T: Serialize + ?Sized>(
        &self,
        subject: &str,
        value: &T,
    ) -> Result<Vec<u8>, String> {
        Ok(self.seal(subject, wire::encode(value)?))
    }

    /// The value `message` holds, if it was sealed for `subject` with this pool's secret.
    pub(crate) fn unpack<T: DeserializeOwned>(
        &self,
        subject: &str,
        message: &[u8],
    ) -> Result<T, Unsealed> {
        let body = self.open(subject, message).ok_or(Unsealed::Forged)?;
        wire::decode(body).map_err(Unsealed::Garbled)
    }
}

fn signing_input(context: &str, body: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(8 + context.len() + body.len());
    input.extend_from_slice(&(context.len() as u64).to_le_bytes());
    input.extend_from_slice(context.as_bytes());
    input.extend_from_slice(body);
    input
}

/// Messages refused: counted, the first logged as a warning, the rest at debug level.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    count: AtomicU64,
}

impl Refusals {
    pub(crate) fn refuse(&self, what: fmt::Arguments<'_>) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!("refused {what} (further refusals are logged at debug level)");
        } else {
            tracing::debug!("refused {what}");
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(secret: &str) -> Sealer {
        Sealer::new(&Secret::new(secret).unwrap())
    }

    #[test]
    fn a_sealed_message_opens_only_with_its_secret_and_subject() {
        let a = sealer("0123456789abcdef");
        let sealed = a.seal("looppool.p.end.m", b"body".to_vec());
        assert_eq!(a.open("looppool.p.end.m", &sealed), Some(&b"body"[..]));
        assert_eq!(a.open("looppool.p.end.n", &sealed), None, "moved subject");
        assert_eq!(
            sealer("fedcba9876543210").open("looppool.p.end.m", &sealed),
            None
        );
        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert_eq!(a.open("looppool.p.end.m", &tampered), None);
        assert_eq!(a.open("looppool.p.end.m", b"body"), None, "unsealed");
        assert_eq!(a.open("looppool.p.end.m", &[]), None);
    }

    #[test]
    fn secrets_are_long_enough_and_generated_ones_differ() {
        assert!(Secret::new("short").is_err());
        let (one, two) = (Secret::generate(), Secret::generate());
        assert_eq!(one.expose().len(), 64);
        assert_ne!(one.expose(), two.expose());
        assert_eq!(format!("{one:?}"), "Secret(..)");
    }
}
