//! Closing librdkafka clients, which waits for the broker, on threads of their
//! own: neither the runtime nor its shutdown waits on a broker.

use std::sync::Arc;

use rdkafka::consumer::Consumer as _;

use super::client::Client;

/// The pump's hold on its consumer: given up (see [`give_up`]) however the pump
/// ends, also when the runtime drops it at shutdown.
pub(super) struct Closing {
    pub(super) consumer: Option<Arc<Client>>,
}

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(c) = self.consumer.take() {
            give_up(c);
        }
    }
}

/// Drops a consumer handle; when it is the last one, closing the consumer (which
/// waits for the broker) runs on a thread of its own, so neither the runtime nor
/// its shutdown waits on the broker.
pub(super) fn release(consumer: Arc<Client>) {
    release_with(consumer, false);
}

/// [`release`], the consumer first giving its partitions up.
pub(super) fn give_up(consumer: Arc<Client>) {
    release_with(consumer, true);
}

fn release_with(consumer: Arc<Client>, unassign: bool) {
    if Arc::strong_count(&consumer) > 1 {
        return;
    }
    close_off_runtime(move || {
        if unassign {
            let _ = consumer.unassign();
        }
        drop(consumer);
    });
}

/// Runs `close` (closing a librdkafka client, which waits for the broker) on a
/// thread of its own, so neither the runtime nor its shutdown waits on it.
pub(super) fn close_off_runtime(close: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(close);
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a thread to close a kafka client");
    }
}
