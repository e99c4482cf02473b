//! The connection to the NATS server, shared by the parent and the members: connecting with
//! state tracking, and publishing to JetStream with retries that survive a broker restart.

use crate::error::Error;
use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{Client, ConnectOptions, Event, HeaderMap, ServerError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a pool's parent and members reach JetStream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum JetStreamApi {
    /// The account's own JetStream (`$JS.API`).
    #[default]
    Default,
    /// The JetStream of this domain (`$JS.<domain>.API`): a leaf node's or a hub's.
    Domain(String),
    /// The JetStream API under this subject prefix (an account import).
    Prefix(String),
}

/// The options used when none are given.
pub(crate) fn default_options() -> ConnectOptions {
    ConnectOptions::new().connection_timeout(Duration::from_secs(5))
}

/// The longest interval between pings to the server.
pub(crate) const PING: Duration = Duration::from_secs(20);

/// Whether the client is connected, and since when it is in that state.
#[derive(Debug)]
pub(crate) struct ConnState {
    up: AtomicBool,
    since: Mutex<Instant>,
}

impl ConnState {
    /// Whether the client is connected now.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// When the connection last came up or went down.
    pub(crate) fn since(&self) -> Instant {
        *self.since.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            *self.since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            if up {
                tracing::info!("reconnected to the NATS server");
            } else {
                tracing::warn!("lost the connection to the NATS server; reconnecting");
            }
        }
    }
}

/// A connected client, its JetStream context and its connection state.
#[derive(Debug, Clone)]
pub(crate) struct Broker {
    pub(crate) client: Client,
    pub(crate) js: jetstream::Context,
    pub(crate) conn: Arc<ConnState>,
}

impl Broker {
    /// Connects to `server` with `options` (credentials, TLS; default ones if `None`), naming
    /// the connection `name` and pinging the server every `ping` (two pings unanswered and the
    /// client counts the connection lost). The client reconnects on its own for as long as it
    /// lives.
    pub(crate) async fn connect(
        server: &str,
        name: &str,
        options: Option<ConnectOptions>,
        ping: Duration,
        api: &JetStreamApi,
    ) -> Result<Self, Error> {
        let conn = Arc::new(ConnState {
            up: AtomicBool::new(true),
            since: Mutex::new(Instant::now()),
        });
        let events = conn.clone();
        let client = options
            .unwrap_or_else(default_options)
            .name(name)
            .ping_interval(ping)
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    match event {
                        Event::Connected => events.set(true),
                        Event::Disconnected => events.set(false),
                        Event::ServerError(ServerError::Other(e))
                            if e.to_lowercase().contains("permissions violation") =>
                        {
                            tracing::error!(
                                "the NATS server refused a permission this connection needs \
                                 (see looppool_nats::Permissions): {e}"
                            )
                        }
                        Event::ServerError(e) => tracing::error!("the NATS server reports: {e}"),
                        other => tracing::debug!("NATS client event: {other}"),
                    }
                }
            })
            .connect(server)
            .await
            .map_err(|e| Error::Connect {
                server: server.into(),
                message: e.to_string(),
            })?;
        let js = match api {
            JetStreamApi::Default => jetstream::new(client.clone()),
            JetStreamApi::Domain(domain) => jetstream::with_domain(client.clone(), domain),
            JetStreamApi::Prefix(prefix) => jetstream::with_prefix(client.clone(), prefix),
        };
        Ok(Self { client, js, conn })
    }

    /// Subscribes to `subject` (core NATS).
    pub(crate) async fn subscribe(&self, subject: String) -> Result<async_nats::Subscriber, Error> {
        self.client
            .subscribe(subject.clone())
            .await
            .map_err(|e| Error::Broker(format!("cannot subscribe to {subject}: {e}")))
    }

    /// The largest message the server takes.
    pub(crate) fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }
}

/// The messages of a pull consumer, `batch` at a time, with the heartbeat and expiry every
/// reader of this crate uses: a lost server shows within seconds and the stream ends, to be
/// opened again. `what` names the consumer in the error.
pub(crate) async fn read(
    consumer: &jetstream::consumer::PullConsumer,
    batch: Option<usize>,
    what: &str,
) -> Result<jetstream::consumer::pull::Stream, Error> {
    let mut stream = consumer.stream();
    if let Some(batch) = batch {
        stream = stream.max_messages_per_batch(batch);
    }
    stream
        .heartbeat(Duration::from_secs(1))
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| Error::Broker(format!("cannot read {what}: {}", error_text(&e))))
}

/// Why a publish to JetStream did not go through.
#[derive(Debug)]
pub(crate) enum PublishFailure {
    /// No stream takes the subject: the pool's streams are gone.
    NoStream,
    /// The broker refused the message for good (too large, or another refusal).
    Refused(String),
    /// The broker did not store the message before the deadline.
    TimedOut(String),
}

impl std::fmt::Display for PublishFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishFailure::NoStream => f.write_str("the pool's streams are gone"),
            PublishFailure::Refused(e) => write!(f, "refused: {e}"),
            PublishFailure::TimedOut(e) => write!(f, "not stored in time (last error: {e})"),
        }
    }
}

/// Publishes `payload` to `subject` and waits until JetStream stored it.
///
/// `msg_id` makes retries idempotent (the stream's duplicate window drops a second copy). A
/// full stream refuses at once; other failures (a broker restarting, a lost connection) are
/// retried until `deadline`.
pub(crate) async fn publish(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: &[u8],
    deadline: Instant,
) -> Result<(), PublishFailure> {
    retry(js, subject, msg_id, bytes_of(payload), deadline, None).await
}

/// Like [`publish`], but hands the message to the client before it returns, so that messages
/// published one after another go out in that order; the future it returns waits until
/// JetStream stored it, and retries from there.
pub(crate) async fn publish_in_order(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: &[u8],
    deadline: Instant,
) -> impl std::future::Future<Output = Result<(), PublishFailure>> + Send + 'static {
    let payload = bytes_of(payload);
    let first = js
        .publish_with_headers(subject.to_string(), id_header(msg_id), payload.clone())
        .await;
    let (js, subject, msg_id) = (js.clone(), subject.to_string(), msg_id.to_string());
    async move {
        let error = match first {
            Ok(ack) => match ack.await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            },
            Err(e) => e,
        };
        retry(&js, &subject, &msg_id, payload, deadline, Some(error)).await
    }
}

fn id_header(msg_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    headers
}

/// Publishes until stored, refused for good, or past `deadline`, after the failed attempt
/// `failed` if one was made.
async fn retry(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: bytes::Bytes,
    deadline: Instant,
    mut failed: Option<jetstream::context::PublishError>,
) -> Result<(), PublishFailure> {
    let mut backoff = Duration::from_micros(500);
    loop {
        let error = match failed.take() {
            Some(e) => e,
            None => {
                let attempt = async {
                    js.publish_with_headers(subject.to_string(), id_header(msg_id), payload.clone())
                        .await?
                        .await
                };
                match attempt.await {
                    Ok(_) => return Ok(()),
                    Err(e) => e,
                }
            }
        };
        let text = error_text(&error);
        match error.kind() {
            PublishErrorKind::StreamNotFound => return Err(PublishFailure::NoStream),
            PublishErrorKind::MaxPayloadExceeded => return Err(PublishFailure::Refused(text)),
            PublishErrorKind::Other if text.contains("stream not found") => {
                return Err(PublishFailure::NoStream)
            }
            _ => {}
        }
        // The stream holds its most bytes or messages.
        if text.contains("maximum bytes exceeded") || text.contains("maximum messages exceeded") {
            return Err(PublishFailure::Refused(format!(
                "the stream is full: {text}"
            )));
        }
        if Instant::now() >= deadline {
            return Err(PublishFailure::TimedOut(text));
        }
        tracing::debug!("publish to {subject} failed, retrying: {text}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(250));
    }
}

fn bytes_of(payload: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(payload)
}

/// An error's text with its sources.
pub(crate) fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
