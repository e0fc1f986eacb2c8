//! The queue on Redis Streams: one stream, one consumer group.
//!
//! `publish` is `XADD` (the stream is capped with `MAXLEN ~`); each consumer reads
//! new entries with `XREADGROUP` on its own connection (a blocking read must not
//! hold up other commands) and acknowledges with `XACK` after handoff. Entries a
//! consumer read but never acknowledged (it died) are taken over by live consumers
//! with `XAUTOCLAIM` once they have been pending longer than `claim_idle`.
//!
//! Partitions: with `partitions = n > 1` the queue is `n` streams
//! (`<stream>:0` … `<stream>:<n-1>`) and a message goes to the stream its key
//! hashes to ([`partition_of`](crate::partition_of)). Jobs divide the partitions
//! among themselves ([`Queue::consumer_of`]), so one key — one room — is handled by
//! one consumer at a time and stays in order. With `partitions = 1` the queue is
//! the single stream `<stream>`, and several consumers share its entries in any
//! order.
//!
//! If the streams or the group disappear (a Redis restart without persistence),
//! a consumer recreates them and carries on. Groups are always created at the
//! start of their stream, so entries a logic published before any job recreated
//! the group are still consumed (a renamed group therefore replays what the
//! capped stream holds).
//!
//! A blocking read whose reply is lost (the connection broke or timed out after
//! Redis handed out entries) leaves those entries pending under this consumer's
//! name; after any read failure the consumer first re-reads its own pending
//! entries (`XREADGROUP … 0`) before asking for new ones, so nothing waits for
//! `claim_idle`.
//!
//! Connections may use TLS (`rediss://`, a private CA, optionally a client
//! certificate) and an ACL user or password from the URL (`herald_tls::redis::client`).

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
/// How long one `XREADGROUP` blocks on the server.
const BLOCK: Duration = Duration::from_secs(1);
/// Entries per read.
const BATCH: usize = 64;

/// The engine name errors carry.
const ENGINE: &str = "redis";

fn unavailable(e: redis::RedisError) -> QueueError {
    QueueError::unavailable(ENGINE, "").caused_by(e)
}

/// Settings of a Redis Streams queue.
#[derive(Debug, Clone)]
pub struct RedisStreamsConfig {
    /// `redis://[user:password@]host:port/db`, or `rediss://…` with `tls`.
    pub url: String,
    /// TLS for `rediss://` URLs: the CA Redis's certificate chains to, and an
    /// optional client certificate.
    pub tls: herald_tls::ClientTls,
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
    /// Number of partition streams (1 = one stream named `stream`).
    pub partitions: u32,
}

impl RedisStreamsConfig {
    /// The stream key of partition `p`.
    pub fn stream_of(&self, p: u32) -> String {
        if self.partitions <= 1 {
            self.stream.clone()
        } else {
            format!("{}:{p}", self.stream)
        }
    }
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
        let client = herald_tls::redis::client(&cfg.url, &cfg.tls)
            .map_err(|e| QueueError::unavailable(ENGINE, "client settings").caused_by(e))?;
        // Bounded waits: with Redis down a publish fails within seconds (the push
        // API answers 503) instead of queueing behind reconnection attempts.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let mut con = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(unavailable)?;
        for p in 0..cfg.partitions.max(1) {
            create_group(&mut con, &cfg.stream_of(p), &cfg.group).await?;
        }
        Ok(RedisStreamsQueue { cfg, client, con })
    }
}

/// Creates the stream and its group unless the group exists. A new group starts
/// at the beginning of the stream: entries already there were published while
/// the group did not exist (Redis restarted empty and a logic's `XADD` recreated
/// the stream first), and nobody has consumed them yet.
async fn create_group(
    con: &mut ConnectionManager,
    stream: &str,
    group: &str,
) -> Result<(), QueueError> {
    let created: redis::RedisResult<()> = con.xgroup_create_mkstream(stream, group, "0").await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(unavailable(e)),
        _ => Ok(()),
    }
}

#[async_trait]
impl Queue for RedisStreamsQueue {
    async fn ping(&self) -> Result<(), QueueError> {
        let mut con = self.con.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn publish(&self, key: &str, payload: Bytes) -> Result<(), QueueError> {
        let mut con = self.con.clone();
        let p = crate::partition_of(key, self.cfg.partitions);
        redis::cmd("XADD")
            .arg(self.cfg.stream_of(p))
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
        self.open_consumer(&crate::all_partitions(self.cfg.partitions), false)
            .await
    }

    fn partitions(&self) -> Option<u32> {
        (self.cfg.partitions > 1).then_some(self.cfg.partitions)
    }

    /// The caller owns these partitions alone, so the consumer first takes over
    /// every entry earlier consumers of them left unacknowledged (read but never
    /// handed out, or handed out by a process that died), in stream order, then
    /// reads new ones.
    async fn consumer_of(&self, partitions: &[u32]) -> Result<Box<dyn Consumer>, QueueError> {
        self.open_consumer(partitions, true).await
    }

    fn backend(&self) -> &'static str {
        "redis-streams"
    }
}

impl RedisStreamsQueue {
    async fn open_consumer(
        &self,
        partitions: &[u32],
        take_over: bool,
    ) -> Result<Box<dyn Consumer>, QueueError> {
        crate::require_partitions(partitions)?;
        let streams: Vec<String> = partitions.iter().map(|p| self.cfg.stream_of(*p)).collect();
        let (reader, reader_id) = open_reader(&self.client).await?;
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
            streams,
            reader: Some(reader),
            reader_id,
            recovering: None,
            name,
            buffered: VecDeque::new(),
            last_claim: Instant::now() - self.cfg.claim_idle,
            take_over,
        }))
    }
}

struct RedisStreamsConsumer {
    queue: RedisStreamsQueue,
    /// The partition streams this consumer reads.
    streams: Vec<String>,
    /// Dedicated connection for blocking reads; reopened after a failure.
    reader: Option<MultiplexedConnection>,
    /// The reader's client id, so [`Consumer::close`] can end a read still
    /// blocked in the server.
    reader_id: Option<i64>,
    /// Take over every pending entry of the streams before the next read (set for
    /// consumers of owned partitions, done once).
    take_over: bool,
    /// After a failed read: per stream, the id after which this consumer's own
    /// pending entries are re-read (replies lost with a broken read).
    recovering: Option<Vec<String>>,
    /// This consumer's name in the group.
    name: String,
    /// Entries read but not yet handed out: (stream, id, payload).
    buffered: VecDeque<(String, String, Bytes)>,
    last_claim: Instant,
}

/// The connection for blocking reads: its response timeout outlasts [`BLOCK`]
/// (the client's default is shorter, which would abandon every idle read). Also
/// answers its client id (`None` if the server would not say).
async fn open_reader(
    client: &redis::Client,
) -> Result<(MultiplexedConnection, Option<i64>), QueueError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(2)));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(unavailable)?;
    let id: Option<i64> = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut con)
        .await
        .ok();
    Ok((con, id))
}

fn payload_of(map: &std::collections::HashMap<String, redis::Value>) -> Option<Bytes> {
    match map.get(PAYLOAD)? {
        redis::Value::BulkString(b) => Some(Bytes::copy_from_slice(b)),
        redis::Value::SimpleString(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        _ => None,
    }
}

impl RedisStreamsConsumer {
    /// Claims entries pending for at least `min_idle` (another consumer's, stale):
    /// one page of each stream, or with `all` every page.
    async fn claim_pending(&mut self, min_idle: Duration, all: bool) -> Result<(), QueueError> {
        let cfg = self.queue.cfg.clone();
        let mut con = self.queue.con.clone();
        for stream in self.streams.clone() {
            let mut cursor = "0-0".to_string();
            loop {
                let reply: redis::RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(&cfg.group)
                    .arg(&self.name)
                    .arg(min_idle.as_millis() as u64)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(100)
                    .query_async(&mut con)
                    .await;
                let reply = match reply {
                    Ok(r) => r,
                    Err(e) if e.code() == Some("NOGROUP") => {
                        self.recreate().await?;
                        break;
                    }
                    Err(e) => return Err(unavailable(e)),
                };
                if !reply.claimed.is_empty() {
                    tracing::debug!(%stream, consumer = %self.name, n = reply.claimed.len(), "claimed pending entries");
                }
                for entry in reply.claimed {
                    if let Some(p) = payload_of(&entry.map) {
                        self.buffered.push_back((stream.clone(), entry.id, p));
                    }
                }
                cursor = reply.next_stream_id;
                if !all || cursor == "0-0" {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The streams or the group vanished (Redis restarted empty): recreate them,
    /// reading whatever was published since.
    async fn recreate(&mut self) -> Result<(), QueueError> {
        tracing::warn!(streams = ?self.streams, "stream group missing; recreating it");
        let mut con = self.queue.con.clone();
        for stream in &self.streams {
            create_group(&mut con, stream, &self.queue.cfg.group).await?;
        }
        Ok(())
    }

    /// Reads new entries, or after a failure this consumer's own pending ones.
    async fn read_new(&mut self) -> Result<(), QueueError> {
        let cfg = &self.queue.cfg;
        let mut opts = StreamReadOptions::default()
            .group(&cfg.group, &self.name)
            .count(BATCH);
        let ids: Vec<String> = match &self.recovering {
            Some(from) => from.clone(),
            None => {
                opts = opts.block(BLOCK.as_millis() as usize);
                self.streams.iter().map(|_| ">".to_string()).collect()
            }
        };
        let reader = match &mut self.reader {
            Some(r) => r,
            None => {
                let (con, id) = open_reader(&self.queue.client).await?;
                self.reader_id = id;
                self.reader.insert(con)
            }
        };
        let reply: redis::RedisResult<Option<StreamReadReply>> =
            reader.xread_options(&self.streams, &ids, &opts).await;
        let reply = match reply {
            Ok(r) => r,
            Err(e) if e.code() == Some("NOGROUP") => return self.recreate().await,
            Err(e) => {
                // The connection may be dead (server restarted): open a new one
                // on the next read, and first take back what the lost reply held.
                self.reader = None;
                self.recovering = Some(self.streams.iter().map(|_| "0".into()).collect());
                return Err(unavailable(e));
            }
        };
        let mut more = false;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            let at = self.streams.iter().position(|s| *s == key.key);
            for entry in key.ids {
                more = true;
                if let (Some(i), Some(from)) = (at, self.recovering.as_mut()) {
                    from[i] = entry.id.clone();
                }
                if let Some(p) = payload_of(&entry.map) {
                    self.buffered.push_back((key.key.clone(), entry.id, p));
                }
            }
        }
        if !more && self.recovering.take().is_some() {
            tracing::debug!(consumer = %self.name, "own pending entries re-read");
        }
        Ok(())
    }
}

#[async_trait]
impl Consumer for RedisStreamsConsumer {
    /// Ends the reader's connection in the server, so a read left blocked there
    /// by a cancelled [`Consumer::next`] cannot take entries after this consumer
    /// is gone. What it read and never handed out stays pending for the next
    /// consumer of these partitions to take over.
    async fn close(self: Box<Self>) -> Result<(), QueueError> {
        let Some(id) = self.reader_id else {
            return Ok(());
        };
        let mut con = self.queue.con.clone();
        match redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async::<i64>(&mut con)
            .await
        {
            Ok(_) => Ok(()),
            // Already gone (the connection broke and was replaced).
            Err(e) if e.to_string().contains("No such client") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn next(&mut self) -> Result<Delivery, QueueError> {
        loop {
            if let Some((stream, id, payload)) = self.buffered.pop_front() {
                return Ok(Delivery::new(
                    payload,
                    Box::new(RedisStreamsAck {
                        con: self.queue.con.clone(),
                        stream,
                        group: self.queue.cfg.group.clone(),
                        id,
                    }),
                ));
            }
            if self.take_over {
                self.claim_pending(Duration::ZERO, true).await?;
                self.take_over = false;
                self.last_claim = Instant::now();
                if !self.buffered.is_empty() {
                    continue;
                }
            }
            if self.last_claim.elapsed() >= self.queue.cfg.claim_idle / 2 {
                self.last_claim = Instant::now();
                self.claim_pending(self.queue.cfg.claim_idle, false).await?;
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
