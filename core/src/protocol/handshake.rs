//! The handshake: the parent's `Hello` (what the worker is told: its number, its limits, its
//! pool) and the worker's answer (ready, refused, or its init failed), with the protocol
//! version checked on both sides before anything else.

use super::PROTOCOL_VERSION;
use super::{encode_header, hello_version, split_body, FrameReader, ToParent, ToWorker};
use crate::runtime::{BoxIo, Runtime};
use futures_util::future::{select, Either};
use futures_util::io::{ReadHalf, WriteHalf};
use futures_util::{AsyncReadExt, AsyncWriteExt};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

/// The parent's reading end of a link, after the handshake.
pub(crate) type LinkReader = FrameReader<ReadHalf<BoxIo>>;
/// The parent's writing end of a link, after the handshake.
pub(crate) type LinkWriter = WriteHalf<BoxIo>;

/// The largest handshake answer the parent accepts, and the smallest frame limit.
pub(crate) const HELLO_LIMIT: usize = 64 * 1024;

/// The largest `Hello` a worker accepts, before it knows the pool's frame limit: a worker
/// configuration makes it large. The parent keeps it within this and the frame limit.
pub(crate) const HELLO_READ_LIMIT: usize = 64 << 20;

/// The longest error or panic message sent to the parent, in bytes.
pub(crate) const MESSAGE_LIMIT: usize = 16 * 1024;

/// What the parent told this worker in the handshake.
#[derive(Debug, Clone)]
pub(crate) struct Handshake {
    pub(crate) worker: usize,
    pub(crate) pool_size: usize,
    pub(crate) concurrency: usize,
    pub(crate) result_credit: usize,
    pub(crate) max_frame: usize,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) heartbeat: Option<Duration>,
    /// Report resource use and loop lag this often.
    pub(crate) stats: Option<Duration>,
    /// The most verbose `tracing` level forwarded to the parent (wire code, 0: none).
    pub(crate) log_level: u8,
    /// Whether the worker has a process of its own.
    pub(crate) own_process: bool,
    pub(crate) pool_name: String,
    pub(crate) worker_name: String,
    /// The worker configuration, encoded: the same bytes for every worker and replacement.
    pub(crate) config: Option<Arc<Vec<u8>>>,
}

fn millis(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_millis().max(1) as u64)
}

fn from_millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl Handshake {
    /// Decodes a `Hello` body, checking the protocol version before anything else.
    pub(crate) fn decode(body: &[u8]) -> Result<Self, String> {
        match hello_version(body) {
            Some(PROTOCOL_VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "protocol version mismatch: the parent speaks version {v}, this worker speaks \
                     version {PROTOCOL_VERSION}"
                ))
            }
            None => return Err("the first frame is not a handshake".to_string()),
        }
        match split_body::<ToWorker<'_>>(body) {
            Ok((
                ToWorker::Hello {
                    worker,
                    pool_size,
                    concurrency,
                    result_credit,
                    max_frame,
                    task_timeout_ms,
                    heartbeat_ms,
                    stats_ms,
                    log_level,
                    own_process,
                    pool_name,
                    worker_name,
                    config,
                    ..
                },
                _,
            )) => Ok(Handshake {
                worker: worker as usize,
                pool_size: pool_size as usize,
                concurrency: concurrency.max(1) as usize,
                result_credit: result_credit as usize,
                max_frame: max_frame as usize,
                task_timeout: from_millis(task_timeout_ms),
                heartbeat: from_millis(heartbeat_ms),
                stats: from_millis(stats_ms),
                log_level,
                own_process,
                pool_name: pool_name.to_string(),
                worker_name: worker_name.to_string(),
                config: config.map(|c| Arc::new(c.to_vec())),
            }),
            Ok(_) => Err("the first frame is not a handshake".to_string()),
            Err(e) => Err(format!("malformed handshake: {e}")),
        }
    }

    /// Appends the `Hello` frame for this handshake, announcing `version`; fails if it exceeds
    /// `limit` bytes (a worker configuration too large for the frame limit).
    pub(crate) fn encode(
        &self,
        version: u32,
        buf: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), String> {
        let hello = ToWorker::Hello {
            version,
            worker: self.worker as u32,
            pool_size: self.pool_size as u32,
            concurrency: self.concurrency as u32,
            result_credit: self.result_credit as u32,
            max_frame: self.max_frame as u32,
            task_timeout_ms: millis(self.task_timeout),
            heartbeat_ms: millis(self.heartbeat),
            stats_ms: millis(self.stats),
            log_level: self.log_level,
            own_process: self.own_process,
            pool_name: &self.pool_name,
            worker_name: &self.worker_name,
            config: self.config.as_deref().map(Vec::as_slice),
        };
        encode_header(buf, &hello, limit).map_err(|e| e.to_string())
    }
}

/// Encodes a refusal of the handshake, to be written before exiting.
pub(crate) fn rejection(reason: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    let reason = truncate_to(reason, MESSAGE_LIMIT);
    encode_header(&mut buf, &ToParent::Rejected { reason }, HELLO_LIMIT).expect("bounded message");
    buf
}

/// The longest prefix of `message` of at most `limit` bytes that ends on a character boundary.
pub(crate) fn truncate_to(message: &str, limit: usize) -> &str {
    if message.len() <= limit {
        return message;
    }
    let mut end = limit;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Why a handshake failed.
pub(crate) enum HandshakeError {
    /// The worker refused it, broke it, or did not answer.
    Protocol(String),
    /// The worker's init hook failed.
    Init(String),
    /// The worker closed its link (exited) before answering.
    Closed,
}

/// Sends the `Hello` and waits for the worker's answer, at most `timeout`.
pub(crate) async fn handshake(
    io: BoxIo,
    hello: &Handshake,
    version: u32,
    timeout: Duration,
    runtime: &dyn Runtime,
) -> Result<(LinkReader, LinkWriter, u32), HandshakeError> {
    let (read_half, mut writer) = io.split();
    let mut buf = Vec::new();
    let limit = hello.max_frame.clamp(HELLO_LIMIT, HELLO_READ_LIMIT);
    if let Err(e) = hello.encode(version, &mut buf, limit) {
        return Err(HandshakeError::Protocol(format!(
            "cannot encode the handshake: {e}"
        )));
    }
    let sent = async {
        writer.write_all(&buf).await?;
        writer.flush().await
    };
    if let Err(e) = sent.await {
        return Err(HandshakeError::Protocol(format!(
            "cannot send the handshake: {e}"
        )));
    }
    let mut reader = FrameReader::new(read_half, HELLO_LIMIT);
    let answer = {
        let read = pin!(reader.next());
        match select(read, runtime.sleep(timeout)).await {
            Either::Left((read, _)) => match read {
                Ok(Some(body)) => match split_body::<ToParent<'_>>(body) {
                    Ok((ToParent::Ready { version: v, pid }, _)) if v == PROTOCOL_VERSION => {
                        Ok(pid)
                    }
                    Ok((ToParent::Ready { version: v, .. }, _)) => {
                        Err(HandshakeError::Protocol(format!(
                            "protocol version mismatch: the worker speaks version {v}, the parent \
                         speaks version {PROTOCOL_VERSION}"
                        )))
                    }
                    Ok((ToParent::Rejected { reason }, _)) => {
                        Err(HandshakeError::Protocol(reason.into()))
                    }
                    Ok((ToParent::InitFailed { message }, _)) => {
                        Err(HandshakeError::Init(message.into()))
                    }
                    Ok(_) => Err(HandshakeError::Protocol(
                        "the first frame is not a handshake answer".into(),
                    )),
                    Err(e) => Err(HandshakeError::Protocol(format!(
                        "malformed handshake answer: {e}"
                    ))),
                },
                Ok(None) => Err(HandshakeError::Closed),
                Err(e) => Err(HandshakeError::Protocol(format!(
                    "cannot read the handshake answer: {e}"
                ))),
            },
            Either::Right(_) => Err(HandshakeError::Protocol(format!(
                "no handshake answer within {timeout:?} (a slow init hook, or a main that does \
                 not call looppool's init() first thing)"
            ))),
        }
    };
    let pid = answer?;
    Ok((reader, writer, pid))
}
