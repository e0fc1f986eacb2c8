//! The networked queues against real engines with TLS and authentication: the
//! Redis Streams queue over TLS with an ACL user, NATS JetStream with TLS and a
//! user/password or a token. Right credentials pass the conformance checks;
//! wrong ones, a wrong CA or a missing client certificate are refused with a
//! clear reason, and settings that cannot work are reported as such.
#![allow(clippy::unwrap_used)]

// `cargo test -p herald-queue` turns both features on (herald-queue is its own
// dev-dependency with them); this file never compiles to fewer tests.
#[cfg(not(all(feature = "redis", feature = "nats")))]
compile_error!(
    "tests/secured.rs tests the Redis Streams and NATS backends: build herald-queue with its `redis` and `nats` features"
);

use std::time::Duration;

use herald_queue::{conformance, QueueError, QueueErrorKind};
use herald_testkit::Pki;
use herald_tls::ClientTls;

fn trusting(ca: &std::path::Path) -> ClientTls {
    ClientTls {
        ca_file: ca.to_path_buf(),
        ..Default::default()
    }
}

fn refused<T>(r: Result<T, QueueError>) -> String {
    match r {
        Err(e)
            if matches!(
                e.kind(),
                QueueErrorKind::Unavailable | QueueErrorKind::Invalid
            ) =>
        {
            e.to_string()
        }
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
}

mod redis_streams {
    use super::*;
    use herald_queue::{RedisStreamsConfig, RedisStreamsQueue};
    use herald_testkit::secured::{self, RedisSecurity};

    async fn queue(url: String, tls: ClientTls) -> Result<RedisStreamsQueue, QueueError> {
        RedisStreamsQueue::connect(RedisStreamsConfig {
            url,
            tls,
            stream: "secured".into(),
            group: "herald-job".into(),
            max_len: 10_000,
            claim_idle: Duration::from_millis(500),
            consumer_name: "test".into(),
            partitions: 2,
        })
        .await
    }

    #[tokio::test]
    async fn over_tls_with_an_acl_user() {
        let pki = Pki::new();
        let redis = secured::redis(RedisSecurity {
            tls: Some(&pki),
            client_certs: true,
            password: Some("default-pw"),
            user: Some(("herald", "herald-pw")),
        });
        let mtls = ClientTls {
            ca_file: pki.ca.clone(),
            cert_file: pki.client_cert.clone(),
            key_file: pki.client_key.clone(),
            ..Default::default()
        };
        let q = queue(redis.redis_url_as("herald", "herald-pw"), mtls.clone())
            .await
            .unwrap();
        conformance::ordered_per_key(&q).await.unwrap();

        let why = refused(queue(redis.redis_url_as("herald", "wrong"), mtls.clone()).await);
        assert!(
            why.to_lowercase().contains("authentication failed"),
            "{why}"
        );
        let wrong_ca = ClientTls {
            ca_file: pki.other_ca.clone(),
            ..mtls.clone()
        };
        let why = refused(queue(redis.redis_url_as("herald", "herald-pw"), wrong_ca).await);
        assert!(why.contains("UnknownIssuer"), "{why}");
        refused(queue(redis.redis_url_as("herald", "herald-pw"), trusting(&pki.ca)).await);
    }
}

mod nats {
    use super::*;
    use herald_queue::{NatsAuth, NatsConfig, NatsQueue};
    use herald_testkit::secured::{self, NatsSecurity};

    async fn queue(url: String, auth: NatsAuth, tls: ClientTls) -> Result<NatsQueue, QueueError> {
        NatsQueue::connect(NatsConfig {
            url,
            stream: "SECURED".into(),
            subject: "herald.secured".into(),
            durable: "herald-job".into(),
            ack_wait: Duration::from_secs(1),
            max_messages: 10_000,
            partitions: 1,
            publish_timeout: Duration::from_secs(2),
            auth,
            tls,
        })
        .await
    }

    fn user(name: &str, password: &str) -> NatsAuth {
        NatsAuth {
            user: name.into(),
            password: password.into(),
            ..Default::default()
        }
    }

    fn token(t: &str) -> NatsAuth {
        NatsAuth {
            token: t.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn tls_and_a_user() {
        let pki = Pki::new();
        let nats = secured::nats(NatsSecurity {
            tls: Some(&pki),
            user: Some(("herald", "herald-pw")),
            ..Default::default()
        });
        let url = nats.nats_url();
        let q = queue(url.clone(), user("herald", "herald-pw"), trusting(&pki.ca))
            .await
            .unwrap();
        conformance::ordered_per_key(&q).await.unwrap();

        let why = refused(queue(url.clone(), user("herald", "wrong"), trusting(&pki.ca)).await);
        assert!(why.to_lowercase().contains("authorization"), "{why}");
        refused(queue(url.clone(), NatsAuth::default(), trusting(&pki.ca)).await);
        refused(
            queue(
                url.clone(),
                user("herald", "herald-pw"),
                trusting(&pki.other_ca),
            )
            .await,
        );
        // Plain NATS to a server that requires TLS.
        let plain = format!("nats://{}", nats.addr);
        refused(queue(plain, user("herald", "herald-pw"), ClientTls::default()).await);
    }

    #[tokio::test]
    async fn a_token_and_mutual_tls() {
        let pki = Pki::new();
        let nats = secured::nats(NatsSecurity {
            tls: Some(&pki),
            client_certs: true,
            token: Some("nats-token"),
            ..Default::default()
        });
        let url = nats.nats_url();
        let mtls = ClientTls {
            ca_file: pki.ca.clone(),
            cert_file: pki.client_cert.clone(),
            key_file: pki.client_key.clone(),
            ..Default::default()
        };
        let q = queue(url.clone(), token("nats-token"), mtls.clone())
            .await
            .unwrap();
        conformance::ordered_per_key(&q).await.unwrap();

        let why = refused(queue(url.clone(), token("nats-tokem"), mtls.clone()).await);
        assert!(why.to_lowercase().contains("authorization"), "{why}");
        // No client certificate: the server ends the handshake.
        refused(queue(url.clone(), token("nats-token"), trusting(&pki.ca)).await);
    }

    #[tokio::test]
    async fn settings_that_cannot_work_are_invalid() {
        let both = NatsAuth {
            user: "u".into(),
            password: "p".into(),
            token: "t".into(),
        };
        let r = queue("nats://127.0.0.1:1".into(), both, ClientTls::default()).await;
        assert!(
            matches!(&r, Err(e) if e.kind() == QueueErrorKind::Invalid),
            "{:?}",
            r.err()
        );
        let no_ca = ClientTls {
            enabled: true,
            ..Default::default()
        };
        let r = queue("tls://127.0.0.1:1".into(), NatsAuth::default(), no_ca).await;
        match r {
            Err(e) if e.kind() == QueueErrorKind::Invalid => {
                let why = e.to_string();
                assert!(why.contains("ca_file"), "{why}")
            }
            other => panic!("expected Invalid, got {:?}", other.err()),
        }
    }
}
