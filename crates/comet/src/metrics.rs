//! comet's Prometheus metrics. Handles are resolved once, so the fast path only
//! touches atomics. Names are documented in `docs/operations.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

/// A counter whose running total the comet can read too: the totals an operator
/// sees per comet in the registry (and on logic's dashboard).
#[derive(Clone)]
pub struct Tally {
    counter: Counter,
    total: Arc<AtomicU64>,
}

impl Tally {
    fn new(counter: Counter) -> Tally {
        Tally {
            counter,
            total: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Adds `n` to the counter and to the total.
    pub fn increment(&self, n: u64) {
        self.counter.increment(n);
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// What was added since the comet started.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Metric handles shared by the hub and every connection task.
#[derive(Clone)]
pub struct CometMetrics {
    /// Open authenticated connections by transport.
    pub connections_tcp: Gauge,
    /// Open authenticated WebSocket connections.
    pub connections_ws: Gauge,
    /// Distinct rooms with members (set by the online report loop).
    pub rooms: Gauge,
    /// Sockets accepted.
    pub accepted: Counter,
    /// Auth frames refused by logic or malformed.
    pub auth_failures: Counter,
    /// Connections closed for a malformed frame or upgrade.
    pub bad_input: Counter,
    /// Connections closed for a missed heartbeat or handshake deadline.
    pub timeouts: Counter,
    /// Pushes handled, by kind.
    pub push_keys: Counter,
    /// Room broadcasts handled.
    pub push_room: Counter,
    /// Broadcasts handled.
    pub push_broadcast: Counter,
    /// Push frames written to clients (a room batch counts each frame).
    pub frames_delivered: Tally,
    /// Socket writes (each one a vectored write of a whole drain).
    pub writes: Counter,
    /// Of those, complete writes made in io_uring batches (many sockets per
    /// system call).
    pub batched_writes: Tally,
    /// Times a connection's outbound queue was full.
    pub slow_consumers: Tally,
    /// Push frames dropped for a full queue (a room batch counts each frame).
    pub dropped: Tally,
    /// Connections closed by the slow-consumer policy.
    pub slow_disconnects: Counter,
    /// Connections closed because a write blocked longer than `write_timeout`.
    pub write_timeouts: Counter,
    /// Connections closed because their credentials expired without a refresh.
    pub credential_expiries: Counter,
    /// TLS handshakes or records that failed.
    pub tls_failures: Counter,
    /// Room changes refused by the connection's grant.
    pub grant_refusals_room: Counter,
    /// Op-14 subscriptions (partly) refused by the connection's grant.
    pub grant_refusals_op: Counter,
    /// Credential refreshes (op 22) accepted.
    pub refreshes_ok: Counter,
    /// Credential refreshes refused.
    pub refreshes_refused: Counter,
    /// History reads by recovering connections (reconnects and gap fills).
    pub fills: Counter,
    /// Frames replayed from history.
    pub replayed: Counter,
    /// Positioned pushes dropped as repeats.
    pub repeats: Counter,
    /// Streams reported in op 25, by status.
    pub streams_recovered: Counter,
    /// (reload)
    pub streams_reload: Counter,
    /// (fresh)
    pub streams_fresh: Counter,
    /// (off)
    pub streams_off: Counter,
    /// A push call's arrival → written to (or queued for) every receiving
    /// connection: key pushes.
    pub fanout_keys: Histogram,
    /// (room batches)
    pub fanout_room: Histogram,
    /// (broadcasts without a speed)
    pub fanout_broadcast: Histogram,
    /// Pushes waiting in outboxes (set by [`crate::Hub::refresh_backlog`]).
    pub outbox_pushes: Gauge,
    /// Bytes of those pushes.
    pub outbox_bytes: Gauge,
    /// Connections with pushes waiting.
    pub backlogged: Gauge,
}

impl CometMetrics {
    /// Resolves every handle against the installed recorder.
    pub fn new() -> CometMetrics {
        CometMetrics {
            connections_tcp: gauge!("herald_connections", "transport" => "tcp"),
            connections_ws: gauge!("herald_connections", "transport" => "ws"),
            rooms: gauge!("herald_rooms"),
            accepted: counter!("herald_accepted_total"),
            auth_failures: counter!("herald_auth_failures_total"),
            bad_input: counter!("herald_bad_input_closes_total"),
            timeouts: counter!("herald_timeout_closes_total"),
            push_keys: counter!("herald_comet_pushes_total", "kind" => "keys"),
            push_room: counter!("herald_comet_pushes_total", "kind" => "room"),
            push_broadcast: counter!("herald_comet_pushes_total", "kind" => "broadcast"),
            frames_delivered: Tally::new(counter!("herald_frames_delivered_total")),
            writes: counter!("herald_socket_writes_total"),
            batched_writes: Tally::new(counter!("herald_socket_writes_batched_total")),
            slow_consumers: Tally::new(counter!("herald_slow_consumers_total")),
            dropped: Tally::new(counter!(
                "herald_dropped_frames_total",
                "reason" => "slow_consumer"
            )),
            slow_disconnects: counter!("herald_slow_consumer_disconnects_total"),
            write_timeouts: counter!("herald_write_timeout_closes_total"),
            credential_expiries: counter!("herald_credential_expiry_closes_total"),
            tls_failures: counter!("herald_tls_failures_total"),
            grant_refusals_room: counter!("herald_grant_refusals_total", "what" => "room"),
            grant_refusals_op: counter!("herald_grant_refusals_total", "what" => "op"),
            refreshes_ok: counter!("herald_credential_refreshes_total", "result" => "ok"),
            refreshes_refused: counter!("herald_credential_refreshes_total", "result" => "refused"),
            fills: counter!("herald_recovery_fills_total"),
            replayed: counter!("herald_recovery_replayed_frames_total"),
            repeats: counter!("herald_recovery_repeats_dropped_total"),
            streams_recovered: counter!("herald_recovery_streams_total", "status" => "recovered"),
            streams_reload: counter!("herald_recovery_streams_total", "status" => "reload"),
            streams_fresh: counter!("herald_recovery_streams_total", "status" => "fresh"),
            streams_off: counter!("herald_recovery_streams_total", "status" => "off"),
            fanout_keys: histogram!("herald_comet_fanout_seconds", "kind" => "keys"),
            fanout_room: histogram!("herald_comet_fanout_seconds", "kind" => "room"),
            fanout_broadcast: histogram!("herald_comet_fanout_seconds", "kind" => "broadcast"),
            outbox_pushes: gauge!("herald_comet_outbox_pushes"),
            outbox_bytes: gauge!("herald_comet_outbox_bytes"),
            backlogged: gauge!("herald_comet_backlogged_connections"),
        }
    }

    /// Counts a stream reported in op 25 with `status`.
    pub fn count_status(&self, status: herald_proto::recovery::StreamStatus) {
        use herald_proto::recovery::StreamStatus;
        match status {
            StreamStatus::Recovered => &self.streams_recovered,
            StreamStatus::Reload => &self.streams_reload,
            StreamStatus::Fresh => &self.streams_fresh,
            StreamStatus::Off => &self.streams_off,
        }
        .increment(1);
    }

    /// Counts a client over a limit (`herald_limit_hits_total{limit}`). Hits are
    /// rare for well-behaved clients, so the handle is looked up per hit.
    pub fn limit_hit(&self, limit: &'static str) {
        counter!("herald_limit_hits_total", "limit" => limit).increment(1);
    }
}

impl Default for CometMetrics {
    fn default() -> Self {
        CometMetrics::new()
    }
}
