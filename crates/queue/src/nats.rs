//! The queue on NATS JetStream: one stream on one subject, one durable pull
//! consumer shared by every job (competing consumers), explicit acknowledgement
//! after handoff. A message delivered but not acknowledged within `ack_wait` (its
//! consumer died) is delivered again to a live consumer.
//!
//! Partitions: with `partitions = n > 1` the stream captures `<subject>.*`, a
//! message is published to `<subject>.<p>` where `p` is its key's partition
//! ([`partition_of`](crate::partition_of)), and each partition has its own durable
//! consumer `<durable>-<p>`. Jobs divide the partitions among themselves
//! ([`Queue::consumer_of`]), so one key (one room) is handled by one job at a
//! time, in order. The consumer of an owned partition pulls in bounded batches,
//! one at a time, and [`Consumer::finish`] reads the last one to its end, so a
//! partition moves to another job with nothing sent and unread. With `partitions = 1` there is one subject and one durable
//! consumer, and several consumers share its messages in any order. The number of
//! partitions of an existing stream cannot change: use a new stream name.
//!
//! The connection may carry a user and password or a token ([`NatsAuth`]) and use
//! TLS with a private CA and an optional client certificate.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use crate::{Acknowledge, Consumer, Delivery, Queue, QueueError};

/// The engine name errors carry.
const ENGINE: &str = "nats";

fn unavailable(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> QueueError {
    QueueError::unavailable(ENGINE, "").caused_by(e)
}

/// Settings of a NATS JetStream queue.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Stream name.
    pub stream: String,
    /// Subject the stream captures and logic publishes to.
    pub subject: String,
    /// Durable consumer name shared by every job.
    pub durable: String,
    /// Time after which an unacknowledged message is delivered again.
    pub ack_wait: Duration,
    /// Most messages the stream keeps (older ones are discarded).
    pub max_messages: i64,
    /// Number of partitions (1 = one subject, one durable consumer).
    pub partitions: u32,
    /// How long a publish waits for JetStream's acknowledgement before it is
    /// reported as failed.
    pub publish_timeout: Duration,
    /// How this client proves who it is (none by default).
    pub auth: NatsAuth,
    /// TLS: the CA the server's certificate must chain to and an optional client
    /// certificate. When enabled the connection must use TLS.
    pub tls: herald_tls::ClientTls,
}

/// Credentials for nats-server: a user and password, or a token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// User name (with `password`).
    pub user: String,
    /// Password of `user`.
    pub password: String,
    /// Token (instead of a user).
    pub token: String,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of logs.
        f.debug_struct("NatsAuth")
            .field("user", &self.user)
            .field("password", &!self.password.is_empty())
            .field("token", &!self.token.is_empty())
            .finish()
    }
}

/// The connection options for `cfg`'s credentials and TLS; a configuration that
/// cannot work is an error here, before any connection is tried.
pub fn connect_options(cfg: &NatsConfig) -> Result<async_nats::ConnectOptions, QueueError> {
    let invalid = |m: &str| QueueError::invalid(ENGINE, m);
    let a = &cfg.auth;
    let mut opts = match (a.user.is_empty(), a.token.is_empty()) {
        (false, false) => return Err(invalid("give a user or a token, not both")),
        (false, true) => {
            async_nats::ConnectOptions::with_user_and_password(a.user.clone(), a.password.clone())
        }
        (true, false) => async_nats::ConnectOptions::with_token(a.token.clone()),
        (true, true) if !a.password.is_empty() => return Err(invalid("a password needs a user")),
        (true, true) => async_nats::ConnectOptions::new(),
    };
    if cfg.tls.is_enabled() {
        if !cfg.tls.server_name.is_empty() {
            return Err(invalid(
                "the host of the URL is the name verified; tls.server_name is not supported",
            ));
        }
        let config =
            herald_tls::client_config(&cfg.tls, &[]).map_err(|e| invalid("TLS").caused_by(e))?;
        opts = opts.require_tls(true).tls_client_config((*config).clone());
    }
    Ok(opts)
}

/// A queue on a JetStream stream.
#[derive(Clone)]
pub struct NatsQueue {
    cfg: NatsConfig,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
}

impl NatsQueue {
    /// Connects and creates the stream if it does not exist.
    pub async fn connect(cfg: NatsConfig) -> Result<NatsQueue, QueueError> {
        let client = connect_options(&cfg)?
            .connect(cfg.url.as_str())
            .await
            .map_err(unavailable)?;
        let mut js = jetstream::new(client);
        // A publish (and any JetStream request) that gets no answer within this
        // long is reported as failed instead of waiting on a dead server.
        js.set_timeout(cfg.publish_timeout);
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: cfg.stream.clone(),
                subjects: vec![if cfg.partitions > 1 {
                    format!("{}.*", cfg.subject)
                } else {
                    cfg.subject.clone()
                }],
                max_messages: cfg.max_messages,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(NatsQueue { cfg, js, stream })
    }
}

impl NatsQueue {
    /// The durable pull consumer of partition `p` (created if missing).
    async fn durable_of(&self, p: u32) -> Result<jetstream::consumer::PullConsumer, QueueError> {
        let durable = if self.cfg.partitions > 1 {
            format!("{}-{p}", self.cfg.durable)
        } else {
            self.cfg.durable.clone()
        };
        self.stream
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    filter_subject: if self.cfg.partitions > 1 {
                        self.subject_of(p)
                    } else {
                        String::new()
                    },
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.cfg.ack_wait,
                    ..Default::default()
                },
            )
            .await
            .map_err(unavailable)
    }

    fn subject_of(&self, p: u32) -> String {
        if self.cfg.partitions > 1 {
            format!("{}.{p}", self.cfg.subject)
        } else {
            self.cfg.subject.clone()
        }
    }
}

#[async_trait]
impl Queue for NatsQueue {
    async fn ping(&self) -> Result<(), QueueError> {
        // A JetStream round trip that also proves the stream is there.
        self.js
            .get_stream(&self.cfg.stream)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn publish(&self, key: &str, payload: Bytes) -> Result<(), QueueError> {
        // The first await sends; the second waits for the stream's acknowledgement,
        // so a message is reported published only once JetStream stored it.
        self.js
            .publish(
                self.subject_of(crate::partition_of(key, self.cfg.partitions)),
                payload,
            )
            .await
            .map_err(unavailable)?
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn consumer(&self) -> Result<Box<dyn Consumer>, QueueError> {
        let mut streams = Vec::new();
        for p in crate::all_partitions(self.cfg.partitions) {
            let consumer = self.durable_of(p).await?;
            streams.push(consumer.messages().await.map_err(unavailable)?);
        }
        Ok(Box::new(SharedConsumer {
            messages: futures_util::stream::select_all(streams),
        }))
    }

    fn partitions(&self) -> Option<u32> {
        (self.cfg.partitions > 1).then_some(self.cfg.partitions)
    }

    /// The caller owns these partitions alone. The consumer pulls in bounded
    /// batches (never a standing subscription), so [`Consumer::finish`] can read
    /// the last one to its end: what the server sent is handed out, in order,
    /// before the partition moves.
    async fn consumer_of(&self, partitions: &[u32]) -> Result<Box<dyn Consumer>, QueueError> {
        crate::require_partitions(partitions)?;
        let mut durables = Vec::with_capacity(partitions.len());
        for &p in partitions {
            durables.push(self.durable_of(p).await?);
        }
        Ok(Box::new(OwnedConsumer {
            durables,
            next_durable: 0,
            pending: None,
            batch: None,
            client: self.js.client(),
        }))
    }

    fn backend(&self) -> &'static str {
        "nats"
    }
}

/// Consumers sharing the durables in any order (`partitions = 1`, or no owner).
struct SharedConsumer {
    /// The partitions' message streams, merged (each keeps its own order).
    messages: futures_util::stream::SelectAll<pull::Stream>,
}

#[async_trait]
impl Consumer for SharedConsumer {
    async fn next(&mut self) -> Result<Delivery, QueueError> {
        match self.messages.next().await {
            Some(Ok(msg)) => Ok(delivery(msg)),
            Some(Err(e)) => Err(unavailable(e)),
            None => Err(QueueError::Closed),
        }
    }
}

fn delivery(msg: jetstream::Message) -> Delivery {
    Delivery::new(msg.payload.clone(), Box::new(NatsAck(msg)))
}

/// Most messages one pull asks for.
const BATCH: usize = 64;
/// How long one pull waits for messages before the server ends it.
const EXPIRES: Duration = Duration::from_secs(1);

/// The consumer of owned partitions: one bounded pull at a time, kept across
/// cancelled [`Consumer::next`] calls, so no message the server sent is left in
/// a subscription nobody reads.
struct OwnedConsumer {
    durables: Vec<jetstream::consumer::PullConsumer>,
    /// The durable the next pull goes to (round robin over the partitions).
    next_durable: usize,
    /// A pull being requested.
    pending: Option<BoxFuture<'static, Result<pull::Batch, QueueError>>>,
    /// The pull whose messages are being read.
    batch: Option<pull::Batch>,
    client: async_nats::Client,
}

impl OwnedConsumer {
    fn request(&mut self) -> BoxFuture<'static, Result<pull::Batch, QueueError>> {
        let durable = self.durables[self.next_durable % self.durables.len()].clone();
        self.next_durable = self.next_durable.wrapping_add(1);
        Box::pin(async move {
            durable
                .batch()
                .max_messages(BATCH)
                .expires(EXPIRES)
                .messages()
                .await
                .map_err(unavailable)
        })
    }
}

#[async_trait]
impl Consumer for OwnedConsumer {
    async fn next(&mut self) -> Result<Delivery, QueueError> {
        loop {
            if self.batch.is_none() {
                let pull = match &mut self.pending {
                    Some(p) => p,
                    None => {
                        let p = self.request();
                        self.pending.insert(p)
                    }
                };
                let result = pull.await;
                self.pending = None;
                self.batch = Some(result?);
            }
            let Some(batch) = self.batch.as_mut() else {
                continue;
            };
            match batch.next().await {
                Some(Ok(msg)) => return Ok(delivery(msg)),
                Some(Err(e)) => {
                    self.batch = None;
                    return Err(unavailable(e));
                }
                None => self.batch = None,
            }
        }
    }

    /// Reads the last pull to its end (at most [`EXPIRES`]: the server ends it)
    /// and returns what it brings, so nothing the server sent is left unread and
    /// no pull is left open when the partition moves.
    async fn finish(&mut self) -> Result<Vec<Delivery>, QueueError> {
        if let Some(pull) = self.pending.take() {
            self.batch = Some(pull.await?);
        }
        let mut rest = Vec::new();
        if let Some(mut batch) = self.batch.take() {
            while let Some(msg) = batch.next().await {
                match msg {
                    Ok(msg) => rest.push(delivery(msg)),
                    Err(e) => {
                        tracing::warn!(error = %e, "the last pull ended with an error");
                        break;
                    }
                }
            }
        }
        Ok(rest)
    }

    /// Sends the acknowledgements still buffered in the client.
    async fn close(self: Box<Self>) -> Result<(), QueueError> {
        self.client.flush().await.map_err(unavailable)
    }
}

struct NatsAck(jetstream::Message);

#[async_trait]
impl Acknowledge for NatsAck {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.0.ack().await.map_err(unavailable)
    }
}
