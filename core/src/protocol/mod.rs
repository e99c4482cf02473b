//! The wire protocol between a parent and its workers.
//!
//! Every message is a *frame*: a 4-byte little-endian length, then a body of that many bytes.
//! The body is a postcard-encoded header (`ToWorker` or `ToParent`) followed, for tasks and
//! outputs, by the postcard encoding of the user's value. Keeping the user's payload outside the
//! header lets the parent encode a task once and lets both sides decode straight out of the read
//! buffer.
//!
//! The first frame each way is the handshake: the parent sends `ToWorker::Hello`, whose first
//! field is the protocol version, and the worker answers `ToParent::Ready` (or
//! `ToParent::Rejected`). The version is decoded before anything else so that a peer speaking
//! a different layout is rejected with a clear message rather than a decoding error.

mod codec;
mod handshake;
mod reader;

pub(crate) use codec::{
    encode_header, encode_header_before_raw, encode_with_payload, encode_with_raw, split_body,
    EncodeError,
};
pub(crate) use handshake::{
    handshake, rejection, truncate_to, Handshake, HandshakeError, LinkReader, LinkWriter,
    HELLO_LIMIT, HELLO_READ_LIMIT, MESSAGE_LIMIT,
};
pub(crate) use reader::{read_frame_blocking, FrameError, FrameReader};

use serde::{Deserialize, Serialize};

/// The version of the wire protocol this build speaks. Both ends must agree exactly.
pub const PROTOCOL_VERSION: u32 = 4;

/// The default limit on a frame's body, in bytes (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Bytes taken by the length prefix of every frame.
pub(crate) const LEN_PREFIX: usize = 4;

/// A header sent by the parent to a worker.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum ToWorker<'a> {
    /// The handshake. `version` must stay the first field of the first variant.
    Hello {
        version: u32,
        worker: u32,
        pool_size: u32,
        concurrency: u32,
        result_credit: u32,
        max_frame: u32,
        /// Cancel a task after this many milliseconds (0: never).
        task_timeout_ms: u64,
        /// Send [`ToParent::Alive`] this often, in milliseconds (0: never).
        heartbeat_ms: u64,
        /// Send [`ToParent::Stats`] this often, in milliseconds (0: never).
        stats_ms: u64,
        /// The most verbose `tracing` level to forward (0: none, 1: error, ..., 5: trace).
        log_level: u8,
        /// Whether the worker has a process of its own (not a thread of the parent's).
        own_process: bool,
        #[serde(borrow)]
        pool_name: &'a str,
        #[serde(borrow)]
        worker_name: &'a str,
        /// The worker configuration given on the builder, encoded, if any.
        #[serde(borrow)]
        config: Option<&'a [u8]>,
    },
    /// A task; the payload follows the header.
    Task { id: u64 },
    /// The parent consumed `n` more outputs: the worker may emit `n` more.
    Ack { n: u32 },
    /// The poison pill: finish what you hold, say [`ToParent::Bye`], exit.
    Stop,
    /// Drop task `id` (queued or running) and report it ended as [`WireOutcome::Cancelled`];
    /// nothing if it already ended.
    Cancel { id: u64 },
}

/// A header sent by a worker to its parent.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum ToParent<'a> {
    /// The handshake answer, sent once the worker's init hook succeeded.
    Ready { version: u32, pid: u32 },
    /// The handshake was refused (version mismatch, unknown worker type).
    Rejected {
        #[serde(borrow)]
        reason: &'a str,
    },
    /// The worker's init hook failed; the worker exits after sending this.
    InitFailed {
        #[serde(borrow)]
        message: &'a str,
    },
    /// An output; the payload follows the header. `task` is `None` for unsolicited outputs.
    Output { task: Option<u64> },
    /// A task ended.
    Done {
        task: u64,
        #[serde(borrow)]
        outcome: WireOutcome<'a>,
    },
    /// The worker drained everything after [`ToWorker::Stop`] and is exiting.
    Bye,
    /// The worker's event loop is turning (sent every `heartbeat_ms`).
    Alive,
    /// What the worker measured of itself (sent every `stats_ms`).
    Stats(WireStats),
    /// A `tracing` event emitted in the worker.
    Log {
        /// 1: error, 2: warn, 3: info, 4: debug, 5: trace.
        level: u8,
        /// The task being polled when the event was emitted.
        task: Option<u64>,
        #[serde(borrow)]
        target: &'a str,
        #[serde(borrow)]
        message: &'a str,
    },
}

/// A worker's measurements of itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct WireStats {
    /// CPU time used (user + system), in microseconds since the worker started.
    pub(crate) cpu_us: u64,
    /// Resident memory, in bytes.
    pub(crate) rss: u64,
    /// Peak resident memory, in bytes.
    pub(crate) peak_rss: u64,
    /// How late the loop's periodic timer fired at worst since the last report, in microseconds.
    pub(crate) lag_us: u64,
    /// Tasks received and not started.
    pub(crate) queued: u32,
    /// Tasks running.
    pub(crate) running: u32,
    /// Tasks alive on the worker's runtime, where the runtime tells.
    pub(crate) runtime_tasks: Option<u64>,
    /// Log events dropped since the worker started because the link was backed up.
    pub(crate) logs_dropped: u64,
}

/// How a task ended, as the worker reports it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum WireOutcome<'a> {
    Completed,
    /// The worker's error, encoded with postcard.
    Failed(#[serde(borrow)] &'a [u8]),
    /// The task could not be decoded, or its error encoded: why.
    Codec(#[serde(borrow)] &'a str),
    Panicked(#[serde(borrow)] &'a str),
    /// Cancelled after the task timeout, in milliseconds.
    TimedOut(u64),
    /// Cancelled at the parent's request ([`ToWorker::Cancel`]).
    Cancelled,
}

/// The codec's hot paths, exposed for the micro-benchmarks in `looppool-bench` (feature
/// `bench`). Not a stable interface.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench {
    use super::*;

    /// Appends a task frame: header, then the postcard encoding of `task`.
    pub fn encode_task<T: Serialize>(buf: &mut Vec<u8>, id: u64, task: &T) {
        encode_with_payload(buf, &ToWorker::Task { id }, task, usize::MAX).expect("encodable");
    }

    /// Appends an output frame of task `id`.
    pub fn encode_output<T: Serialize>(buf: &mut Vec<u8>, id: u64, output: &T) {
        let header = ToParent::Output { task: Some(id) };
        encode_with_payload(buf, &header, output, usize::MAX).expect("encodable");
    }

    /// Reads every frame in `bytes` as a worker does: decodes each task's header and payload;
    /// returns how many there were.
    pub fn decode_tasks<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> usize {
        let mut reader = FrameReader::new(futures_util::io::Cursor::new(bytes), usize::MAX);
        let mut n = 0;
        futures_executor::block_on(async {
            while let Some(body) = reader.next().await.expect("well-formed frames") {
                let (header, payload) = split_body::<ToWorker<'_>>(body).expect("a header");
                assert!(matches!(header, ToWorker::Task { .. }));
                let _: T = postcard::from_bytes(payload).expect("a task");
                n += 1;
            }
        });
        n
    }
}

/// Reads the protocol version out of a `Hello` body without decoding the rest of it.
pub(crate) fn hello_version(body: &[u8]) -> Option<u32> {
    let (variant, rest): (u32, &[u8]) = postcard::take_from_bytes(body).ok()?;
    if variant != 0 {
        return None;
    }
    let (version, _): (u32, &[u8]) = postcard::take_from_bytes(rest).ok()?;
    Some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        let header = ToWorker::Hello {
            version,
            worker: 3,
            pool_size: 8,
            concurrency: 2,
            result_credit: 16,
            max_frame: 1024,
            task_timeout_ms: 0,
            heartbeat_ms: 0,
            stats_ms: 0,
            config: None,
            log_level: 0,
            own_process: true,
            pool_name: "p",
            worker_name: "w",
        };
        encode_header(&mut buf, &header, usize::MAX).unwrap();
        buf
    }

    #[test]
    fn hello_version_is_read_before_the_rest_of_the_handshake() {
        for version in [0, 1, 7, u32::MAX] {
            let frame = hello(version);
            assert_eq!(hello_version(&frame[LEN_PREFIX..]), Some(version));
        }
    }

    #[test]
    fn hello_version_is_none_for_other_frames() {
        let mut buf = Vec::new();
        encode_header(&mut buf, &ToWorker::Stop, usize::MAX).unwrap();
        assert_eq!(hello_version(&buf[LEN_PREFIX..]), None);
        assert_eq!(hello_version(&[]), None);
    }
}
