//! Connecting to the engines the configuration names: the route/online store, the
//! queue and the registry. An engine that is down at startup is reported (with its
//! address) and retried with backoff until it answers or the process is told to
//! stop; an engine compiled out of this binary is a configuration error.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use herald_discovery::{LocalRegistry, Registry};
use herald_queue::{MemoryQueue, Queue};
use herald_store::{HistoryStore, MemoryHistory, MemoryStore, OnlineStore, SessionStore};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{Config, DiscoveryBackend, QueueBackend, StoreBackend};
#[cfg(feature = "kafka")]
use crate::config::{KafkaSaslMechanism, KafkaSecurityProtocol};

/// Calls `attempt` until it succeeds, logging each failure and waiting 0.5 s, 1 s,
/// 2 s … (at most 10 s) in between. Gives up only when `stop` is cancelled.
pub async fn with_retry<T, E, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    mut attempt: F,
) -> anyhow::Result<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(500);
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => bail!("stopped while waiting for {what}"),
            r = attempt() => r,
        };
        match outcome {
            Ok(v) => {
                if failures > 0 {
                    info!(failures, "{what} is reachable now");
                }
                return Ok(v);
            }
            Err(e) => {
                failures += 1;
                error!(error = %e, retry_in = ?delay, "cannot reach {what}");
                tokio::select! {
                    _ = stop.cancelled() => bail!("stopped while waiting for {what}: {e}"),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The route and online stores and the history (one engine serves all three).
#[derive(Clone)]
pub struct Stores {
    /// Routes.
    pub sessions: Arc<dyn SessionStore>,
    /// Online counts.
    pub online: Arc<dyn OnlineStore>,
    /// Streams' history, in the same engine as the routes.
    pub history: Arc<dyn HistoryStore>,
    /// The in-process store, which needs its expired routes swept.
    pub memory: Option<Arc<MemoryStore>>,
    /// The in-process history, which needs its expired streams swept.
    pub memory_history: Option<Arc<MemoryHistory>>,
}

impl Stores {
    /// Removes expired routes and streams of the in-process stores.
    pub fn sweep(&self) {
        if let Some(m) = &self.memory {
            m.sweep();
        }
        if let Some(h) = &self.memory_history {
            h.sweep();
        }
    }

    /// Streams' history with the `[history]` settings, for logic.
    pub fn history(&self, cfg: &Config) -> herald_logic::History {
        herald_logic::History::new(self.history.clone(), cfg.history.clone())
    }
}

/// Opens the configured store.
pub async fn store(cfg: &Config, stop: &CancellationToken) -> anyhow::Result<Stores> {
    let s = &cfg.store;
    match s.backend {
        StoreBackend::Memory => {
            let m = Arc::new(MemoryStore::new(s.route_ttl));
            let h = Arc::new(MemoryHistory::new());
            Ok(Stores {
                sessions: m.clone(),
                online: m.clone(),
                history: h.clone(),
                memory: Some(m),
                memory_history: Some(h),
            })
        }
        #[cfg(feature = "redis")]
        StoreBackend::Redis => {
            // Settings that cannot work are refused now, not retried forever.
            herald_tls::redis::client(&s.redis_url, &s.tls)
                .map_err(|e| anyhow::anyhow!("store: {e}"))?;
            let what = format!("the Redis store at {}", redact(&s.redis_url));
            let r = with_retry(&what, stop, || {
                herald_store::RedisStore::connect(&s.redis_url, &s.tls, &s.prefix, s.route_ttl)
            })
            .await?;
            let r = Arc::new(r);
            Ok(Stores {
                sessions: r.clone(),
                online: r.clone(),
                history: r,
                memory: None,
                memory_history: None,
            })
        }
        #[cfg(not(feature = "redis"))]
        StoreBackend::Redis => {
            let _ = stop;
            bail!("store.backend = \"redis\" but this binary was built without the `redis` feature")
        }
    }
}

/// Opens the configured queue. `consumer` names this process among the queue's
/// consumers (Redis Streams consumer name).
pub async fn queue(
    cfg: &Config,
    consumer: &str,
    stop: &CancellationToken,
) -> anyhow::Result<Arc<dyn Queue>> {
    let q = &cfg.queue;
    let _ = (consumer, stop);
    Ok(match q.backend {
        QueueBackend::Memory => Arc::new(MemoryQueue::new(q.capacity, q.publish_timeout)),
        #[cfg(feature = "redis")]
        QueueBackend::Redis => {
            let c = herald_queue::RedisStreamsConfig {
                url: q.redis.url.clone(),
                tls: q.redis.tls.clone(),
                stream: q.redis.stream.clone(),
                group: q.redis.group.clone(),
                max_len: q.redis.max_len,
                claim_idle: q.redis.claim_idle,
                consumer_name: consumer.to_string(),
                partitions: q.redis.partitions.max(1),
            };
            herald_tls::redis::client(&q.redis.url, &q.redis.tls)
                .map_err(|e| anyhow::anyhow!("queue.redis: {e}"))?;
            let what = format!("the Redis Streams queue at {}", redact(&q.redis.url));
            Arc::new(
                with_retry(&what, stop, || {
                    herald_queue::RedisStreamsQueue::connect(c.clone())
                })
                .await?,
            )
        }
        #[cfg(feature = "nats")]
        QueueBackend::Nats => {
            let c = herald_queue::NatsConfig {
                url: q.nats.url.clone(),
                stream: q.nats.stream.clone(),
                subject: q.nats.subject.clone(),
                durable: q.nats.durable.clone(),
                ack_wait: q.nats.ack_wait,
                max_messages: q.nats.max_messages,
                partitions: q.nats.partitions.max(1),
                publish_timeout: q.publish_timeout,
                auth: herald_queue::NatsAuth {
                    user: q.nats.user.clone(),
                    password: q.nats.password.clone(),
                    token: q.nats.token.clone(),
                },
                tls: q.nats.tls.clone(),
            };
            // Settings that cannot work are refused now, not retried forever.
            herald_queue::nats::connect_options(&c)?;
            let what = format!("the NATS JetStream queue at {}", redact(&q.nats.url));
            Arc::new(with_retry(&what, stop, || herald_queue::NatsQueue::connect(c.clone())).await?)
        }
        #[cfg(feature = "kafka")]
        QueueBackend::Kafka => {
            let c = kafka_config(cfg, consumer);
            c.security.properties()?;
            let what = format!("the Kafka queue at {}", q.kafka.brokers.join(","));
            Arc::new(
                with_retry(&what, stop, || herald_queue::KafkaQueue::connect(c.clone())).await?,
            )
        }
        #[allow(unreachable_patterns)]
        other => bail!(
            "queue.backend = {:?} but this binary was built without that feature",
            other
        ),
    })
}

#[cfg(feature = "kafka")]
fn kafka_config(cfg: &Config, consumer: &str) -> herald_queue::KafkaConfig {
    let k = &cfg.queue.kafka;
    herald_queue::KafkaConfig {
        brokers: k.brokers.join(","),
        topic: k.topic.clone(),
        group_id: k.group.clone(),
        partitions: k.partitions,
        client_id: consumer.to_string(),
        publish_timeout: cfg.queue.publish_timeout,
        fetch_wait: k.fetch_wait,
        security: herald_queue::KafkaSecurity {
            protocol: match k.security_protocol {
                KafkaSecurityProtocol::Plaintext => herald_queue::SecurityProtocol::Plaintext,
                KafkaSecurityProtocol::Ssl => herald_queue::SecurityProtocol::Ssl,
                KafkaSecurityProtocol::SaslPlaintext => {
                    herald_queue::SecurityProtocol::SaslPlaintext
                }
                KafkaSecurityProtocol::SaslSsl => herald_queue::SecurityProtocol::SaslSsl,
            },
            sasl_mechanism: match k.sasl_mechanism {
                KafkaSaslMechanism::Plain => herald_queue::SaslMechanism::Plain,
                KafkaSaslMechanism::ScramSha256 => herald_queue::SaslMechanism::ScramSha256,
                KafkaSaslMechanism::ScramSha512 => herald_queue::SaslMechanism::ScramSha512,
            },
            sasl_username: k.sasl_username.clone(),
            sasl_password: k.sasl_password.clone(),
            tls: k.tls.clone(),
        },
        ..Default::default()
    }
}

/// Opens the configured registry.
pub async fn registry(cfg: &Config, stop: &CancellationToken) -> anyhow::Result<Arc<dyn Registry>> {
    let d = &cfg.discovery;
    match d.backend {
        DiscoveryBackend::Local => {
            let _ = stop;
            Ok(Arc::new(LocalRegistry::new()))
        }
        #[cfg(feature = "etcd")]
        DiscoveryBackend::Etcd => {
            let c = herald_discovery::EtcdConfig {
                endpoints: d.endpoints.clone(),
                prefix: d.prefix.clone(),
                env: cfg.server.env.clone(),
                lease_ttl: d.lease_ttl,
                username: d.username.clone(),
                password: d.password.clone(),
                tls: d.tls.clone(),
                ..Default::default()
            };
            // TLS files that cannot be read are refused now, not retried forever.
            c.security()?;
            let what = format!("etcd at {}", d.endpoints.join(","));
            let r = with_retry(&what, stop, || {
                herald_discovery::EtcdRegistry::connect(c.clone())
            })
            .await?;
            Ok(Arc::new(r))
        }
        #[cfg(not(feature = "etcd"))]
        DiscoveryBackend::Etcd => {
            bail!(
                "discovery.backend = \"etcd\" but this binary was built without the `etcd` feature"
            )
        }
    }
}

/// Checks that a role process is configured with shared engines: an in-process
/// store, queue or registry cannot be shared with other processes.
pub fn require_shared(cfg: &Config, role: &str, store: bool, queue: bool) -> anyhow::Result<()> {
    if cfg.discovery.backend == DiscoveryBackend::Local {
        bail!(
            "herald {role} needs a shared registry: set discovery.backend = \"etcd\" \
             (the local registry only works inside `herald standalone`)"
        );
    }
    if store && cfg.store.backend == StoreBackend::Memory {
        bail!(
            "herald {role} needs a shared store: set store.backend = \"redis\" \
             (the memory store only works inside `herald standalone`)"
        );
    }
    if queue && cfg.queue.backend == QueueBackend::Memory {
        bail!(
            "herald {role} needs a shared queue: set queue.backend to \"kafka\", \"nats\" \
             or \"redis\" (the memory queue only works inside `herald standalone`)"
        );
    }
    Ok(())
}

/// `url` with its password replaced by `***`, for logs and error messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The user info ends at the last '@' (a password may hold '/' or '@').
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    format!("{scheme}://{user}:***{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("rediss://herald:s3cret@10.0.0.1:6379/0"),
            "rediss://herald:***@10.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://:pw@h:1/"), "redis://:***@h:1/");
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert_eq!(redact("nats://u:p@n:4222"), "nats://u:***@n:4222");
        // A password with '/' or '@' in it does not leak its tail.
        assert_eq!(redact("redis://u:a/b@c@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("not a url"), "not a url");
    }
}
