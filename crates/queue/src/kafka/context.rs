//! How herald's librdkafka clients report: their logs and errors, rate-limited
//! per kind, and the loss of every broker connection, told to the topic guard.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

use super::topic::TopicGuard;

/// How often one kind of librdkafka complaint is logged.
const COMPLAINT_EVERY: Duration = Duration::from_secs(10);

/// librdkafka's logs and client errors, each kind (log facility, error code) at
/// most once per [`COMPLAINT_EVERY`] with the number of repeats in between.
/// With a broker down librdkafka reports every reconnect attempt (several a
/// second per client) and retries by itself; the log should say so once.
#[derive(Default)]
pub(super) struct QuietContext {
    last: Mutex<HashMap<String, (Instant, u64)>>,
    /// Told when every broker connection is lost.
    topic: Option<Arc<TopicGuard>>,
}

impl QuietContext {
    pub(super) fn watching(topic: Arc<TopicGuard>) -> QuietContext {
        QuietContext {
            topic: Some(topic),
            ..Default::default()
        }
    }

    /// Whether to log `kind` now, and how many of it were held back before.
    fn admit(&self, kind: &str) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match last.get_mut(kind) {
            Some((at, held)) if now.duration_since(*at) < COMPLAINT_EVERY => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let before = *held;
                *at = now;
                *held = 0;
                Some(before)
            }
            None => {
                last.insert(kind.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let Some(held) = self.admit(fac) else {
            return;
        };
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility = fac, repeats = held, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility = fac, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility = fac, "{message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let (Some(topic), Some(RDKafkaErrorCode::AllBrokersDown)) =
            (&self.topic, error.rdkafka_error_code())
        {
            topic.broker_lost();
        }
        let kind = match error.rdkafka_error_code() {
            Some(code) => format!("{code:?}"),
            None => error.to_string(),
        };
        if let Some(held) = self.admit(&kind) {
            tracing::warn!(target: "librdkafka", %error, repeats = held, "{reason}; retrying");
        }
    }
}

/// Consumers are assigned their partitions: no rebalance to follow.
impl ConsumerContext for QuietContext {}
