//! The configuration file (`--config FILE`, TOML) and its environment overrides
//! (`HERALD_<SECTION>__<KEY>`). Every option has a default, so no file is needed.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use herald_comet::CometConfig;
use herald_job::JobConfig;
use herald_logic::LogicConfig;
use serde::{Deserialize, Serialize};

/// Identity of this process in the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Server id: the same string in routes, the registry and job. Empty means
    /// `<advertise host>:<RPC port>` (3109 for a comet and standalone, 3119 for
    /// logic; `<host>:job-<pid>` for job, which serves nothing).
    pub id: String,
    /// Region, for the balancer.
    pub region: String,
    /// Zone (data centre).
    pub zone: String,
    /// Deployment environment name.
    pub env: String,
}

/// Which engine holds routes and online counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// In this process (standalone only).
    #[default]
    Memory,
    /// Redis, in goim's key layout (shared by every logic).
    Redis,
}

/// The session (route) and online store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` or `redis`.
    pub backend: StoreBackend,
    /// How long a route lives without a refresh (goim's `redis.expire`).
    #[serde(with = "humantime_serde")]
    pub route_ttl: Duration,
    /// Redis URL: `redis://[[user]:password@]host:port/db`, or `rediss://…` for
    /// TLS (with `tls.ca_file`). A user is a Redis 6+ ACL user; `:password@` alone
    /// is `requirepass`.
    pub redis_url: String,
    /// Prefix put before every Redis key (empty = goim's exact key names).
    pub prefix: String,
    /// TLS for a `rediss://` URL: the CA Redis's certificate chains to and an
    /// optional client certificate.
    pub tls: herald_tls::ClientTls,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Memory,
            route_ttl: Duration::from_secs(1800),
            redis_url: "redis://127.0.0.1:6379/".into(),
            prefix: String::new(),
            tls: herald_tls::ClientTls::default(),
        }
    }
}

/// Which engine carries pushes from logic to job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// In this process (standalone only).
    #[default]
    Memory,
    /// Redis Streams with a consumer group.
    Redis,
    /// NATS JetStream with a durable pull consumer.
    Nats,
    /// Kafka (or a Kafka-compatible broker) with a consumer group.
    Kafka,
}

/// The Redis Streams queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisQueueConfig {
    /// Redis URL (the forms of `store.redis_url`).
    pub url: String,
    /// TLS for a `rediss://` URL.
    pub tls: herald_tls::ClientTls,
    /// Stream key.
    pub stream: String,
    /// Consumer group shared by every job.
    pub group: String,
    /// Approximate stream length cap (`XADD MAXLEN ~`).
    pub max_len: usize,
    /// Entries pending this long on a consumer are taken over by another job.
    #[serde(with = "humantime_serde")]
    pub claim_idle: Duration,
    /// Partition streams (`<stream>:<p>`); the jobs divide them, so each room is
    /// handled by one job at a time, in order. 1 = one stream shared in any order.
    pub partitions: u32,
}

impl Default for RedisQueueConfig {
    fn default() -> Self {
        RedisQueueConfig {
            url: "redis://127.0.0.1:6379/".into(),
            tls: herald_tls::ClientTls::default(),
            stream: "herald:push".into(),
            group: "herald-job".into(),
            max_len: 1_000_000,
            claim_idle: Duration::from_secs(30),
            partitions: 16,
        }
    }
}

/// The NATS JetStream queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsQueueConfig {
    /// Server URL.
    pub url: String,
    /// Stream name (created when missing).
    pub stream: String,
    /// Subject the stream captures.
    pub subject: String,
    /// Durable consumer shared by every job.
    pub durable: String,
    /// Unacknowledged messages are redelivered after this long.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Stream message cap.
    pub max_messages: i64,
    /// Partition subjects (`<subject>.<p>`, one durable consumer each); the jobs
    /// divide them, so each room is handled by one job at a time, in order.
    /// 1 = one subject shared in any order. Fixed for the life of a stream.
    pub partitions: u32,
    /// User name (with `password`), for a server with users.
    pub user: String,
    /// Password of `user`.
    pub password: String,
    /// Token, for a server with a token (instead of a user).
    pub token: String,
    /// TLS (`tls://` URLs or a server that requires it): the CA of the server's
    /// certificate and an optional client certificate.
    pub tls: herald_tls::ClientTls,
}

impl Default for NatsQueueConfig {
    fn default() -> Self {
        NatsQueueConfig {
            url: "nats://127.0.0.1:4222".into(),
            stream: "HERALD_PUSH".into(),
            subject: "herald.push".into(),
            durable: "herald-job".into(),
            ack_wait: Duration::from_secs(30),
            max_messages: 1_000_000,
            partitions: 16,
            user: String::new(),
            password: String::new(),
            token: String::new(),
            tls: herald_tls::ClientTls::default(),
        }
    }
}

/// The Kafka queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaQueueConfig {
    /// Bootstrap brokers, `host:port`: a list, or one comma-separated string
    /// (handy in `HERALD_QUEUE__KAFKA__BROKERS`).
    #[serde(deserialize_with = "list_or_csv")]
    pub brokers: Vec<String>,
    /// Topic (goim's default name; created when missing).
    pub topic: String,
    /// Consumer group shared by every job (goim's default name).
    pub group: String,
    /// Partitions of a topic created by herald.
    pub partitions: i32,
    /// Longest a job's fetch waits at the broker when there is nothing new
    /// (`fetch.wait.max.ms`). A broker answers sooner when messages arrive;
    /// one that does not (tansu) adds up to this much delivery latency.
    #[serde(with = "humantime_serde")]
    pub fetch_wait: Duration,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: KafkaSecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (with a `sasl_*` protocol).
    pub sasl_mechanism: KafkaSaslMechanism,
    /// SASL user name.
    pub sasl_username: String,
    /// SASL password.
    pub sasl_password: String,
    /// TLS (with `ssl` or `sasl_ssl`): `ca_file` (required), `cert_file` and
    /// `key_file` for a client certificate.
    pub tls: herald_tls::ClientTls,
}

/// `queue.kafka.security_protocol` (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KafkaSecurityProtocol {
    /// Neither TLS nor SASL.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

/// `queue.kafka.sasl_mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum KafkaSaslMechanism {
    /// The password as it is (use with TLS).
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl Default for KafkaQueueConfig {
    fn default() -> Self {
        KafkaQueueConfig {
            brokers: vec!["127.0.0.1:9092".into()],
            topic: "goim-push-topic".into(),
            group: "goim-push-group-job".into(),
            partitions: 8,
            fetch_wait: Duration::from_millis(100),
            security_protocol: KafkaSecurityProtocol::Plaintext,
            sasl_mechanism: KafkaSaslMechanism::Plain,
            sasl_username: String::new(),
            sasl_password: String::new(),
            tls: herald_tls::ClientTls::default(),
        }
    }
}

/// The queue between logic and job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// `memory`, `redis`, `nats` or `kafka`.
    pub backend: QueueBackend,
    /// Messages the in-process queue holds.
    pub capacity: usize,
    /// How long a push waits for the queue to take it (room in the in-process
    /// queue, JetStream's acknowledgement) before the API answers 503.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Redis Streams settings.
    pub redis: RedisQueueConfig,
    /// NATS JetStream settings.
    pub nats: NatsQueueConfig,
    /// Kafka settings.
    pub kafka: KafkaQueueConfig,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            backend: QueueBackend::Memory,
            capacity: 65536,
            publish_timeout: Duration::from_secs(1),
            redis: RedisQueueConfig::default(),
            nats: NatsQueueConfig::default(),
            kafka: KafkaQueueConfig::default(),
        }
    }
}

/// Which registry processes find each other in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryBackend {
    /// This process only (standalone).
    #[default]
    Local,
    /// etcd v3 (leases and watches).
    Etcd,
}

/// Service discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// `local` or `etcd`.
    pub backend: DiscoveryBackend,
    /// etcd client URLs: a list, or one comma-separated string (handy in
    /// `HERALD_DISCOVERY__ENDPOINTS`).
    #[serde(deserialize_with = "list_or_csv")]
    pub endpoints: Vec<String>,
    /// Key prefix of herald's registrations.
    pub prefix: String,
    /// Lease time to live: a process that stops keeping its lease alive disappears
    /// after this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// etcd user, when etcd has authentication enabled (empty = none).
    pub username: String,
    /// Password of `username`.
    pub password: String,
    /// TLS for `https://` endpoints: the CA of etcd's certificate, an optional
    /// client certificate, the name to verify.
    pub tls: herald_tls::ClientTls,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            backend: DiscoveryBackend::Local,
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/herald".into(),
            lease_ttl: Duration::from_secs(10),
            username: String::new(),
            password: String::new(),
            tls: herald_tls::ClientTls::default(),
        }
    }
}

/// Internal RPC between the tiers (gRPC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcConfig {
    /// Where `herald comet` serves `goim.comet.Comet`. Unset: `127.0.0.1:3109`,
    /// or `0.0.0.0:3109` once the port is protected (`token` or `tls.cert_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comet_bind: Option<SocketAddr>,
    /// Where `herald logic` serves `goim.logic.Logic`. Unset: `127.0.0.1:3119`,
    /// or `0.0.0.0:3119` once the port is protected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logic_bind: Option<SocketAddr>,
    /// The host other processes use to reach this one (registered in discovery
    /// and part of the default server id). Empty = this machine's host name.
    pub advertise_host: String,
    /// Establishing a connection to another tier.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline of every call to another tier.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Shared secret of the cluster: sent as `authorization: Bearer <token>` on
    /// every call and required by every gRPC server. Empty = none (goim's
    /// behaviour). Printable ASCII without spaces.
    pub token: String,
    /// TLS on the gRPC ports and for calls to other tiers.
    pub tls: RpcTlsConfig,
}

/// TLS between the tiers (`[rpc.tls]`): this process's certificate (served on its
/// gRPC port, and presented to servers that ask for one), the CA it trusts for
/// the servers it calls, and the CA client certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RpcTlsConfig {
    /// PEM certificate chain of this process. Set on a comet or logic: its gRPC
    /// port serves TLS and it registers as `grpcs://`. Reloaded on `SIGHUP`.
    pub cert_file: PathBuf,
    /// PEM key of `cert_file`.
    pub key_file: PathBuf,
    /// PEM CA bundle: servers require a client certificate signed by it (mutual
    /// TLS). Empty = no client certificate asked for.
    pub client_ca_file: PathBuf,
    /// PEM CA bundle the certificates of the servers this process calls must
    /// chain to. Set = calls to `grpcs://` addresses use TLS, and plain
    /// addresses are refused unless `allow_plain`.
    pub ca_file: PathBuf,
    /// Name to verify in servers' certificates instead of the host dialled.
    pub server_name: String,
    /// With `ca_file` set, still call servers registered with plain `grpc://`
    /// (while a cluster is being moved to TLS).
    pub allow_plain: bool,
}

impl RpcTlsConfig {
    /// The server side, when this process has a certificate.
    pub fn server(&self) -> Option<herald_tls::ServerTls> {
        (!self.cert_file.as_os_str().is_empty()).then(|| herald_tls::ServerTls {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: self.client_ca_file.clone(),
        })
    }

    /// The client side, when this process trusts a CA for the servers it calls.
    pub fn client(&self) -> Option<herald_tls::ClientTls> {
        (!self.ca_file.as_os_str().is_empty()).then(|| herald_tls::ClientTls {
            enabled: true,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            server_name: self.server_name.clone(),
        })
    }
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            comet_bind: None,
            logic_bind: None,
            advertise_host: String::new(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            token: String::new(),
            tls: RpcTlsConfig::default(),
        }
    }
}

impl RpcConfig {
    /// Whether the gRPC ports authenticate their callers — a token, or TLS that
    /// requires client certificates — which makes them listen on every interface
    /// by default. TLS alone encrypts but lets anyone call.
    pub fn protected(&self) -> bool {
        !self.token.is_empty()
            || self
                .tls
                .server()
                .is_some_and(|s| !s.client_ca_file.as_os_str().is_empty())
    }

    fn default_bind(&self, port: u16) -> SocketAddr {
        let ip = if self.protected() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([127, 0, 0, 1])
        };
        SocketAddr::new(ip, port)
    }

    /// Where a comet serves gRPC: `comet_bind`, else the safe default.
    pub fn comet_addr(&self) -> SocketAddr {
        self.comet_bind.unwrap_or_else(|| self.default_bind(3109))
    }

    /// Where a logic serves gRPC: `logic_bind`, else the safe default.
    pub fn logic_addr(&self) -> SocketAddr {
        self.logic_bind.unwrap_or_else(|| self.default_bind(3119))
    }
}

/// Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `herald comet` and `herald job` serve `/metrics` (unset = nowhere).
    /// `herald logic` and `herald standalone` serve it on the HTTP API port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `herald_comet=debug,info`; `RUST_LOG`
    /// wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// Shutdown behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// The whole shutdown after SIGINT/SIGTERM is bounded by this.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// A comet closes its clients spread over this window (WebSocket close code
    /// 1012), so they do not all reconnect elsewhere at the same instant. Clamped
    /// to `grace`.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: Duration::from_secs(15),
            drain: Duration::from_secs(5),
        }
    }
}

/// The process's memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// How often the heap's free pages are handed back to the kernel (glibc's
    /// `malloc_trim`), so memory freed after a burst does not stay with the
    /// process. `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub trim_interval: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            trim_interval: Duration::from_secs(10),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Process identity.
    pub server: ServerConfig,
    /// Connection tier.
    pub comet: CometConfig,
    /// Control tier and HTTP API.
    pub logic: LogicConfig,
    /// Fan-out tier.
    pub job: JobConfig,
    /// Route and online store.
    pub store: StoreConfig,
    /// Service discovery.
    pub discovery: DiscoveryConfig,
    /// Internal RPC.
    pub rpc: RpcConfig,
    /// Queue between logic and job.
    pub queue: QueueConfig,
    /// Metrics.
    pub metrics: MetricsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Shutdown.
    pub shutdown: ShutdownConfig,
    /// Memory.
    pub memory: MemoryConfig,
    /// Connect authentication (`trust`, `jwt`, `webhook`).
    pub auth: herald_logic::auth::AuthConfig,
    /// The certificate of the public TLS listeners (WSS, TLS over TCP, HTTPS API).
    pub tls: herald_tls::ServerTls,
    /// Limits on client connections and on the HTTP API.
    pub limits: herald_limits::LimitsConfig,
    /// API keys of the HTTP API.
    pub api: herald_logic::api_keys::ApiConfig,
    /// Which streams keep history (recovery after a reconnect); off by default.
    pub history: herald_logic::HistoryConfig,
    /// The customer-service chat served on the HTTP API port.
    pub chat: herald_chat::ChatConfig,
}

impl Config {
    /// Defaults, then the file (if given; it must exist), then `HERALD_*` variables.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                bail!("configuration file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig.merge(Env::prefixed("HERALD_").split("__"));
        let cfg: Config = fig.extract().context("invalid configuration")?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.history.validate().map_err(anyhow::Error::msg)?;
        if self.comet.tcp_bind.is_empty() && self.comet.ws_bind.is_empty() {
            bail!("comet needs at least one listener (comet.tcp_bind or comet.ws_bind)");
        }
        if self.comet.outbound_queue == 0 {
            bail!("comet.outbound_queue must be at least 1");
        }
        if self.job.room_batch == 0 {
            bail!("job.room_batch must be at least 1");
        }
        if self.logic.node.heartbeat.is_zero() {
            bail!("logic.node.heartbeat must be positive");
        }
        if self.comet.online_report_interval.is_zero() || self.logic.online_interval.is_zero() {
            bail!("online intervals must be positive");
        }
        herald_logic::api_keys::ApiKeys::new(&self.api)?;
        if self.logic.tls && !self.tls.is_enabled() {
            bail!("logic.tls = true needs a certificate: set tls.cert_file and tls.key_file");
        }
        Ok(())
    }

    /// Whether the HTTP API refuses strangers: API keys are configured, or it is
    /// served over HTTPS with client certificates required. HTTPS alone encrypts
    /// but lets anyone push.
    pub fn api_protected(&self) -> bool {
        !self.api.keys.is_empty()
            || (self.logic.tls && !self.tls.client_ca_file.as_os_str().is_empty())
    }

    /// Where the HTTP API listens: `logic.http_bind` when set; otherwise port 3111
    /// on every interface when the API is protected, and on loopback when it is
    /// open to anyone who can reach it.
    pub fn http_bind(&self) -> SocketAddr {
        self.logic.http_bind.unwrap_or_else(|| {
            let host = if self.api_protected() {
                std::net::Ipv4Addr::UNSPECIFIED
            } else {
                std::net::Ipv4Addr::LOCALHOST
            };
            SocketAddr::from((host, herald_logic::config::HTTP_PORT))
        })
    }

    /// This configuration with its secrets replaced by `***`: passwords, tokens,
    /// the HMAC secret, webhook header values, and the passwords inside URLs. What
    /// `herald config` prints unless asked for the secrets.
    pub fn redacted(&self) -> Config {
        fn hide(s: &mut String) {
            if !s.is_empty() {
                *s = "***".into();
            }
        }
        fn hide_url(s: &mut String) {
            *s = crate::engines::redact(s);
        }
        let mut c = self.clone();
        hide(&mut c.auth.jwt.secret);
        for v in c.auth.webhook.headers.values_mut() {
            hide(v);
        }
        hide_url(&mut c.auth.webhook.url);
        hide_url(&mut c.auth.jwt.jwks_url);
        hide_url(&mut c.store.redis_url);
        hide_url(&mut c.queue.redis.url);
        hide_url(&mut c.queue.nats.url);
        hide(&mut c.queue.nats.password);
        hide(&mut c.queue.nats.token);
        hide(&mut c.queue.kafka.sasl_password);
        hide(&mut c.discovery.password);
        hide(&mut c.rpc.token);
        c
    }

    /// The server id in force for standalone (`<host>:3109` by default).
    pub fn server_id(&self) -> String {
        self.server_id_with_port(self.rpc.comet_addr().port())
    }

    /// The server id in force for a process serving RPC on `port`.
    pub fn server_id_with_port(&self, port: u16) -> String {
        if !self.server.id.is_empty() {
            return self.server.id.clone();
        }
        format!("{}:{port}", self.advertise_host())
    }

    /// The host other processes use to reach this one.
    pub fn advertise_host(&self) -> String {
        if self.rpc.advertise_host.is_empty() {
            hostname()
        } else {
            self.rpc.advertise_host.clone()
        }
    }
}

/// A list of strings given as a list or as one comma-separated string.
fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(l) => l,
        ListOrCsv::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "Full example" of docs/configuration.md is a valid configuration, and
    /// names every section the configuration has.
    #[test]
    fn documented_full_example_loads() {
        let doc = include_str!("../../../docs/configuration.md");
        let start = doc.find("## Full example").expect("the section exists");
        let rest = &doc[start..];
        let open = rest.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let close = rest[open..].find("```").expect("the block ends");
        let example = &rest[open..open + close];
        let parsed: Config = toml::from_str(example).unwrap_or_else(|e| panic!("{e}"));
        parsed.validate().unwrap();
        let table: toml::Table = toml::from_str(example).unwrap();
        let all: toml::Table =
            toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
        for section in all.keys() {
            assert!(
                table.contains_key(section),
                "the full example lacks [{section}]"
            );
        }
    }

    #[test]
    fn defaults_roundtrip_through_toml() {
        let text = toml::to_string(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
    }

    #[test]
    fn http_bind_is_loopback_unless_protected_or_set() {
        let mut cfg = Config::default();
        assert_eq!(cfg.http_bind(), "127.0.0.1:3111".parse().unwrap());
        cfg.api.keys.push(herald_logic::api_keys::ApiKeyConfig {
            name: "backend".into(),
            hash: herald_logic::api_keys::hash_key("k"),
            scopes: vec![herald_logic::api_keys::Scope::Push],
            rate: 0,
            burst: 0,
        });
        assert_eq!(cfg.http_bind(), "0.0.0.0:3111".parse().unwrap());
        cfg.api.keys.clear();
        // HTTPS alone encrypts but lets anyone push: still loopback.
        cfg.logic.tls = true;
        assert_eq!(cfg.http_bind(), "127.0.0.1:3111".parse().unwrap());
        // With client certificates required, callers are authenticated.
        cfg.tls.client_ca_file = "/etc/herald/clients-ca.pem".into();
        assert_eq!(cfg.http_bind(), "0.0.0.0:3111".parse().unwrap());
        cfg.logic.http_bind = Some("10.0.0.5:8080".parse().unwrap());
        assert_eq!(cfg.http_bind(), "10.0.0.5:8080".parse().unwrap());
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn api_section_is_checked_at_load() {
        let dir = std::env::temp_dir().join(format!("herald-cfg-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.toml");
        let hash = herald_logic::api_keys::hash_key("k");
        std::fs::write(
            &path,
            format!("[[api.keys]]\nname = \"backend\"\nhash = \"{hash}\"\nscopes = [\"push\", \"read\"]\nrate = 5\n"),
        )
        .unwrap();
        let cfg = Config::load(Some(&path)).unwrap();
        assert_eq!(cfg.api.keys[0].rate, 5);
        assert_eq!(cfg.api.keys[0].burst, 0);
        std::fs::write(
            &path,
            "[api]\nkeys = [{ name = \"b\", hash = \"sha256:zz\", scopes = [\"push\"] }]\n",
        )
        .unwrap();
        let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
        assert!(err.contains("api.keys[0]"), "{err}");
        std::fs::write(
            &path,
            "[api]\nkeys = [{ name = \"b\", hash = \"x\", scopes = [\"root\"] }]\n",
        )
        .unwrap();
        let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
        assert!(err.contains("root"), "{err}");
        std::fs::write(&path, "[logic]\ntls = true\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
        assert!(err.contains("tls.cert_file"), "{err}");
        // Keys also come from the environment (one TOML-like list).
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "HERALD_API__KEYS",
                format!("[{{name=\"env\",hash=\"{hash}\",scopes=[\"admin\"]}}]"),
            );
            let cfg = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.api.keys[0].name, "env");
            Ok(())
        });
    }

    #[test]
    fn rpc_ports_listen_on_loopback_until_protected() {
        let mut rpc = RpcConfig::default();
        assert_eq!(rpc.comet_addr(), "127.0.0.1:3109".parse().unwrap());
        assert_eq!(rpc.logic_addr(), "127.0.0.1:3119".parse().unwrap());
        rpc.token = "t".into();
        assert_eq!(rpc.comet_addr(), "0.0.0.0:3109".parse().unwrap());
        rpc.token.clear();
        // TLS alone encrypts but lets anyone call: still loopback.
        rpc.tls.cert_file = "/etc/herald/host.pem".into();
        assert_eq!(rpc.logic_addr(), "127.0.0.1:3119".parse().unwrap());
        // Mutual TLS authenticates the callers.
        rpc.tls.client_ca_file = "/etc/herald/ca.pem".into();
        assert_eq!(rpc.logic_addr(), "0.0.0.0:3119".parse().unwrap());
        // A CA alone protects nothing this process serves.
        let mut client_only = RpcConfig::default();
        client_only.tls.ca_file = "/etc/herald/ca.pem".into();
        assert!(!client_only.protected());
        assert_eq!(client_only.comet_addr(), "127.0.0.1:3109".parse().unwrap());
        // An explicit address wins either way.
        rpc.comet_bind = Some("10.0.0.1:4000".parse().unwrap());
        assert_eq!(rpc.comet_addr(), "10.0.0.1:4000".parse().unwrap());
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn file_and_env_override() {
        let dir = std::env::temp_dir().join(format!("herald-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.toml");
        std::fs::write(
            &path,
            "[comet]\nhandshake_timeout = \"2s\"\noutbound_queue = 8\n[logic.node]\nheartbeat = \"30s\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALD_COMET__OUTBOUND_QUEUE", "16");
            jail.set_env("HERALD_QUEUE__KAFKA__BROKERS", "k1:9092, k2:9092");
            jail.set_env("HERALD_DISCOVERY__ENDPOINTS", "[\"http://e1:2379\"]");
            let cfg = Config::load(Some(&path)).map_err(|e| e.to_string())?;
            assert_eq!(cfg.comet.handshake_timeout, Duration::from_secs(2));
            assert_eq!(cfg.comet.outbound_queue, 16);
            assert_eq!(cfg.logic.node.heartbeat, Duration::from_secs(30));
            assert_eq!(cfg.queue.kafka.brokers, ["k1:9092", "k2:9092"]);
            assert_eq!(cfg.discovery.endpoints, ["http://e1:2379"]);
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALD_LOGIC__HTTP_BIND", "0.0.0.0:3111");
            let cfg = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.http_bind(), "0.0.0.0:3111".parse().unwrap());
            Ok(())
        });
        assert!(Config::load(Some(&dir.join("missing.toml"))).is_err());
        std::fs::write(&path, "[comet]\nno_such_option = 1\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&path)).unwrap_err());
        assert!(err.contains("no_such_option"), "{err}");
        std::fs::write(&path, "[comet]\nhandshake_timeout = \"soon\"\n").unwrap();
        assert!(Config::load(Some(&path)).is_err());
    }
}
