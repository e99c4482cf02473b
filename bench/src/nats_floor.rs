//! The floor under the NATS figures: the least any pool can do that stores each task in
//! JetStream until a process on the other side takes it, and gets an answer back. The parent
//! here stores each 16-byte task on a work-queue stream (file storage, as the pool's) and waits
//! for its acknowledgement; a peer process per member reads its own consumer, answers each task
//! on core NATS and acknowledges it. No worker process, no sealing, no bookkeeping.

use futures_util::StreamExt;
use looppool_core::BoxError;
use looppool_nats::async_nats::{self, jetstream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Makes this program a floor peer: `nats-floor-peer URL STREAM CONSUMER BATCH`.
pub(crate) const PEER_ARG: &str = "nats-floor-peer";

const STREAM: &str = "looppool-bench-floor";

/// Answers each task of consumer `CONSUMER` on the subject its payload names, then
/// acknowledges it.
pub(crate) fn peer_main() {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let [url, stream, consumer, batch] = &args[..] else {
        eprintln!("usage: {PEER_ARG} URL STREAM CONSUMER BATCH");
        std::process::exit(2);
    };
    let batch: usize = batch.parse().unwrap_or(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let served = rt.block_on(async {
        let client = async_nats::connect(url).await?;
        let js = jetstream::new(client.clone());
        let consumer: jetstream::consumer::PullConsumer =
            js.get_consumer_from_stream(consumer, stream).await?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(batch)
            .messages()
            .await?;
        while let Some(m) = messages.next().await {
            let m = m?;
            let reply = String::from_utf8_lossy(&m.payload[16..]).into_owned();
            client.publish(reply, m.payload.slice(..16)).await?;
            m.ack().await?;
        }
        Ok::<_, BoxError>(())
    });
    if let Err(e) = served {
        eprintln!("floor peer: {e}");
        std::process::exit(1);
    }
}

/// A work-queue stream with one consumer per peer, and the peers; all removed on drop.
pub(crate) struct Floor {
    client: async_nats::Client,
    js: jetstream::Context,
    peers: Vec<Child>,
    reply: String,
}

impl Floor {
    pub(crate) async fn start(url: &str, peers: usize, batch: usize) -> Result<Self, BoxError> {
        let client = async_nats::connect(url).await?;
        let js = jetstream::new(client.clone());
        let _ = js.delete_stream(STREAM).await;
        let stream = js
            .create_stream(jetstream::stream::Config {
                name: STREAM.into(),
                subjects: vec!["looppool-bench.floor.*".into()],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        for k in 0..peers {
            let name = format!("p{k}");
            stream
                .create_consumer(jetstream::consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("looppool-bench.floor.{name}"),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ..Default::default()
                })
                .await?;
            children.push(
                Command::new(&exe)
                    .args([PEER_ARG, url, STREAM, &name, &batch.to_string()])
                    .stdout(Stdio::null())
                    .spawn()?,
            );
        }
        Ok(Self {
            reply: client.new_inbox(),
            client,
            js,
            peers: children,
        })
    }

    /// Stores one task for peer `k` and waits until the stream has it.
    async fn store(&self, k: usize) -> Result<(), BoxError> {
        let mut payload = vec![7u8; 16];
        payload.extend_from_slice(self.reply.as_bytes());
        self.js
            .publish(format!("looppool-bench.floor.p{k}"), payload.into())
            .await?
            .await?;
        Ok(())
    }

    /// One task at a time, `trips` times after a tenth as warm-up: the time from storing each
    /// to its answer.
    pub(crate) async fn trips(&self, trips: usize) -> Result<Vec<Duration>, BoxError> {
        let mut answers = self.client.subscribe(self.reply.clone()).await?;
        self.client.flush().await?;
        let mut times = Vec::with_capacity(trips);
        for i in 0..trips + trips / 10 {
            let t = Instant::now();
            self.store(i % self.peers.len()).await?;
            answers.next().await.ok_or("the answers ended")?;
            if i >= trips / 10 {
                times.push(t.elapsed());
            }
        }
        Ok(times)
    }

    /// `tasks` tasks with `window` stores under way, round-robin over the peers: the time until
    /// every answer came back.
    pub(crate) async fn pipelined(
        &self,
        tasks: usize,
        window: usize,
    ) -> Result<Duration, BoxError> {
        let mut answers = self.client.subscribe(self.reply.clone()).await?;
        self.client.flush().await?;
        let started = Instant::now();
        let stored = futures_util::stream::iter(0..tasks)
            .map(|i| self.store(i % self.peers.len()))
            .buffer_unordered(window)
            .fold(Ok(()), |acc: Result<(), String>, r| async move {
                acc.and(r.map_err(|e| e.to_string()))
            });
        let answered = async {
            for _ in 0..tasks {
                answers.next().await.ok_or("the answers ended")?;
            }
            Ok::<_, BoxError>(())
        };
        let (stored, answered) = futures_util::future::join(stored, answered).await;
        stored?;
        answered?;
        Ok(started.elapsed())
    }

    pub(crate) async fn stop(mut self) {
        self.reap();
        let _ = self.js.delete_stream(STREAM).await;
    }

    fn reap(&mut self) {
        for p in &mut self.peers {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.reap();
    }
}
