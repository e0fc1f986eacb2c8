//! The queue on Redis Streams: one stream, one consumer group.
//!
//! `publish` is `XADD` (the stream is capped with `MAXLEN ~`); each consumer reads
//! new entries with `XREADGROUP` on its own connection (a blocking read must not
//! hold up other commands) and acknowledges with `XACK` after handoff. Entries a
//! consumer read but never acknowledged (it died) are taken over by live consumers
//! with `XAUTOCLAIM` once they have been pending longer than `claim_idle`.
//!
//! Order: one consumer sees entries in stream order. Several consumers of the group
//! share entries, so messages of one key may be handled by different consumers; run
//! one job per stream where strict per-room order matters.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;

use crate::{Acknowledge, Consumer, Delivery, Queue, QueueError};

/// Field holding the payload in each stream entry.
const PAYLOAD: &str = "p";
/// Field holding the partition key.
const KEY: &str = "k";

fn unavailable(e: redis::RedisError) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

/// Settings of a Redis Streams queue.
#[derive(Debug, Clone)]
pub struct RedisStreamsConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Stream key.
    pub stream: String,
    /// Consumer group.
    pub group: String,
    /// Approximate cap on the stream length.
    pub max_len: usize,
    /// Pending entries idle this long are reclaimed from their (dead) consumer.
    pub claim_idle: Duration,
    /// Name prefix of this process's consumers (made unique per consumer).
    pub consumer_name: String,
}

/// A queue on a Redis stream.
#[derive(Clone)]
pub struct RedisStreamsQueue {
    cfg: RedisStreamsConfig,
    client: redis::Client,
    con: ConnectionManager,
}

impl RedisStreamsQueue {
    /// Connects and creates the stream and group if they do not exist.
    pub async fn connect(cfg: RedisStreamsConfig) -> Result<RedisStreamsQueue, QueueError> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(unavailable)?;
        let mut con = ConnectionManager::new(client.clone())
            .await
            .map_err(unavailable)?;
        let created: redis::RedisResult<()> = con
            .xgroup_create_mkstream(&cfg.stream, &cfg.group, "$")
            .await;
        if let Err(e) = created {
            if e.code() != Some("BUSYGROUP") {
                return Err(unavailable(e));
            }
        }
        Ok(RedisStreamsQueue { cfg, client, con })
    }
}

#[async_trait]
impl Queue for RedisStreamsQueue {
    async fn publish(&self, key: &str, payload: Bytes) -> Result<(), QueueError> {
        let mut con = self.con.clone();
        redis::cmd("XADD")
            .arg(&self.cfg.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.cfg.max_len)
            .arg("*")
            .arg(KEY)
            .arg(key)
            .arg(PAYLOAD)
            .arg(payload.as_ref())
            .query_async::<String>(&mut con)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn consumer(&self) -> Result<Box<dyn Consumer>, QueueError> {
        let reader = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(unavailable)?;
        let name = format!(
            "{}-{}",
            self.cfg.consumer_name,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        Ok(Box::new(RedisStreamsConsumer {
            queue: self.clone(),
            reader,
            name,
            buffered: VecDeque::new(),
            last_claim: Instant::now() - self.cfg.claim_idle,
        }))
    }

    fn backend(&self) -> &'static str {
        "redis-streams"
    }
}

struct RedisStreamsConsumer {
    queue: RedisStreamsQueue,
    /// Dedicated connection for blocking reads.
    reader: MultiplexedConnection,
    /// This consumer's name in the group.
    name: String,
    /// Entries read but not yet handed out: (id, payload).
    buffered: VecDeque<(String, Bytes)>,
    last_claim: Instant,
}

fn payload_of(map: &std::collections::HashMap<String, redis::Value>) -> Option<Bytes> {
    match map.get(PAYLOAD)? {
        redis::Value::BulkString(b) => Some(Bytes::copy_from_slice(b)),
        redis::Value::SimpleString(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        _ => None,
    }
}

impl RedisStreamsConsumer {
    async fn claim_stale(&mut self) -> Result<(), QueueError> {
        let cfg = &self.queue.cfg;
        let mut con = self.queue.con.clone();
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&cfg.stream)
            .arg(&cfg.group)
            .arg(&self.name)
            .arg(cfg.claim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(100)
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        for entry in reply.claimed {
            if let Some(p) = payload_of(&entry.map) {
                self.buffered.push_back((entry.id, p));
            }
        }
        Ok(())
    }

    async fn read_new(&mut self) -> Result<(), QueueError> {
        let cfg = &self.queue.cfg;
        let opts = StreamReadOptions::default()
            .group(&cfg.group, &self.name)
            .count(64)
            .block(1000);
        let reply: Option<StreamReadReply> = self
            .reader
            .xread_options(&[&cfg.stream], &[">"], &opts)
            .await
            .map_err(unavailable)?;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                if let Some(p) = payload_of(&entry.map) {
                    self.buffered.push_back((entry.id, p));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Consumer for RedisStreamsConsumer {
    async fn next(&mut self) -> Result<Delivery, QueueError> {
        loop {
            if let Some((id, payload)) = self.buffered.pop_front() {
                return Ok(Delivery::new(
                    payload,
                    Box::new(RedisStreamsAck {
                        con: self.queue.con.clone(),
                        stream: self.queue.cfg.stream.clone(),
                        group: self.queue.cfg.group.clone(),
                        id,
                    }),
                ));
            }
            if self.last_claim.elapsed() >= self.queue.cfg.claim_idle / 2 {
                self.last_claim = Instant::now();
                self.claim_stale().await?;
                if !self.buffered.is_empty() {
                    continue;
                }
            }
            self.read_new().await?;
        }
    }
}

struct RedisStreamsAck {
    con: ConnectionManager,
    stream: String,
    group: String,
    id: String,
}

#[async_trait]
impl Acknowledge for RedisStreamsAck {
    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        let mut con = self.con.clone();
        con.xack::<_, _, _, i64>(&self.stream, &self.group, &[&self.id])
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
