//! The Kafka queue with TLS and SASL against tansu: TLS (librdkafka's OpenSSL)
//! through a TLS terminator in front of the broker, with the right CA, a wrong
//! one, and client certificates; a broker that requires SASL refuses herald
//! without it and with unknown SCRAM credentials. tansu 0.6 offers no PLAIN and
//! cannot hold a SCRAM user while it requires authentication on in-memory
//! storage, so a successful SASL login is not tested here (docs/security.md
//! says so).
#![allow(clippy::unwrap_used)]

// `cargo test -p herald-queue` turns the feature on (herald-queue is its own
// dev-dependency with it); this file never compiles to no tests.
#[cfg(not(feature = "kafka"))]
compile_error!(
    "tests/kafka_secured.rs tests the Kafka backend: build herald-queue with its `kafka` feature"
);

use std::time::Duration;

use herald_queue::{
    conformance, KafkaConfig, KafkaQueue, KafkaSecurity, Queue, QueueErrorKind, SaslMechanism,
    SecurityProtocol,
};
use herald_testkit::{secured, Pki};
use herald_tls::ClientTls;

fn config(brokers: String, topic: &str, security: KafkaSecurity) -> KafkaConfig {
    KafkaConfig {
        brokers,
        topic: topic.into(),
        group_id: format!("{topic}-job"),
        partitions: 2,
        publish_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(5),
        security,
        ..KafkaConfig::default()
    }
}

fn tls(
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> KafkaSecurity {
    KafkaSecurity {
        protocol: SecurityProtocol::Ssl,
        tls: ClientTls {
            ca_file: ca.to_path_buf(),
            cert_file: identity.map(|i| i.0.to_path_buf()).unwrap_or_default(),
            key_file: identity.map(|i| i.1.to_path_buf()).unwrap_or_default(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Connecting fails (librdkafka cannot fetch metadata) or, if it got that far,
/// the first publish does.
async fn refused(cfg: KafkaConfig) -> String {
    match KafkaQueue::connect(cfg).await {
        Err(e) => e.to_string(),
        Ok(q) => match q.publish("k", "x".into()).await {
            Err(e) => e.to_string(),
            Ok(()) => panic!("expected a refusal, the publish went through"),
        },
    }
}

#[tokio::test]
async fn tls_with_the_right_ca_and_not_a_wrong_one() {
    let pki = Pki::new();
    let kafka = secured::kafka_tls(&pki, false);
    let q = KafkaQueue::connect(config(kafka.brokers(), "tls1", tls(&pki.ca, None)))
        .await
        .unwrap();
    conformance::ordered_per_key(&q).await.unwrap();

    let why = refused(config(kafka.brokers(), "tls2", tls(&pki.other_ca, None))).await;
    assert!(why.starts_with("kafka queue unavailable: at "), "{why}");
    // Plaintext to the TLS port gets nowhere.
    refused(config(kafka.brokers(), "tls3", KafkaSecurity::default())).await;
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new();
    let kafka = secured::kafka_tls(&pki, true);
    let with_cert = tls(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    let q = KafkaQueue::connect(config(kafka.brokers(), "mtls1", with_cert))
        .await
        .unwrap();
    conformance::ordered_per_key(&q).await.unwrap();
    refused(config(kafka.brokers(), "mtls2", tls(&pki.ca, None))).await;
}

#[tokio::test]
async fn sasl_is_required_and_an_unknown_scram_user_refused() {
    let kafka = secured::kafka_sasl();
    // Without SASL the broker answers nothing but "not authenticated".
    refused(config(
        kafka.kafka_brokers(),
        "sasl1",
        KafkaSecurity::default(),
    ))
    .await;
    // A SCRAM login for a user the broker does not know is refused.
    for mechanism in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
        let scram = KafkaSecurity {
            protocol: SecurityProtocol::SaslPlaintext,
            sasl_mechanism: mechanism,
            sasl_username: "nobody".into(),
            sasl_password: "nothing".into(),
            ..Default::default()
        };
        let why = refused(config(kafka.kafka_brokers(), "sasl2", scram)).await;
        assert!(why.starts_with("kafka queue unavailable: at "), "{why}");
    }
}

#[tokio::test]
async fn settings_that_cannot_work_are_invalid() {
    let cases = [
        KafkaSecurity {
            protocol: SecurityProtocol::Ssl,
            ..Default::default()
        },
        KafkaSecurity {
            protocol: SecurityProtocol::SaslSsl,
            tls: ClientTls {
                ca_file: "/nonexistent/ca.pem".into(),
                ..Default::default()
            },
            sasl_username: "u".into(),
            ..Default::default()
        },
        KafkaSecurity {
            protocol: SecurityProtocol::SaslPlaintext,
            ..Default::default()
        },
        KafkaSecurity {
            sasl_username: "u".into(),
            ..Default::default()
        },
    ];
    for security in cases {
        let shown = format!("{security:?}");
        match KafkaQueue::connect(config("127.0.0.1:1".into(), "x", security)).await {
            Err(e) if e.kind() == QueueErrorKind::Invalid => {
                assert_eq!(e.engine(), Some("kafka"), "{e}")
            }
            other => panic!("{shown}: expected Invalid, got {:?}", other.err()),
        }
    }
}
