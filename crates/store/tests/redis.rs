//! The Redis store against a real, private redis-server.
#![allow(clippy::unwrap_used)]

// `cargo test -p herald-store` turns the feature on (herald-store is its own
// dev-dependency with it); this file never compiles to no tests.
#[cfg(not(feature = "redis"))]
compile_error!("tests/redis.rs tests the Redis store: build herald-store with its `redis` feature");

use std::time::Duration;

use herald_store::conformance;
use herald_store::{OnlineStore, RedisStore, SessionStore, StoreErrorKind};

async fn store(prefix: &str) -> (herald_testkit::Engine, RedisStore) {
    let redis = herald_testkit::redis();
    let s = RedisStore::connect(
        &redis.redis_url(),
        &Default::default(),
        prefix,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    (redis, s)
}

#[tokio::test]
async fn redis_store_conforms() {
    let (_redis, s) = store("").await;
    conformance::routes(&s).await.unwrap();
    conformance::remove_only_own_route(&s).await.unwrap();
    conformance::key_changes_member(&s).await.unwrap();
    conformance::online_reports(&s).await.unwrap();
    conformance::history(&s).await.unwrap();
}

/// Keys use goim's layout (with the optional prefix), so goim tools and mixed
/// deployments read them.
#[tokio::test]
async fn goim_key_layout_with_prefix() {
    let (redis, s) = store("hd:").await;
    s.add_route(42, "dev1", "comet-a:3109").await.unwrap();
    let client = redis::Client::open(redis.redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let server: String = redis::cmd("GET")
        .arg("hd:key_dev1")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(server, "comet-a:3109");
    let field: String = redis::cmd("HGET")
        .arg("hd:mid_42")
        .arg("dev1")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(field, "comet-a:3109");
    let ttl: i64 = redis::cmd("TTL")
        .arg("hd:key_dev1")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 60, "ttl {ttl}");
    s.put_server_online(&herald_store::ServerOnline {
        server: "comet-a:3109".into(),
        room_count: [("live://1".to_string(), 3)].into(),
        updated: 100,
    })
    .await
    .unwrap();
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg("hd:ol_comet-a:3109")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(fields.len(), 1);
    assert!(fields[0].parse::<u64>().unwrap() < 64);
}

/// A store whose Redis goes away reports `Unavailable` (never a silent success),
/// and works again by itself once Redis is back.
#[tokio::test]
async fn outage_is_reported_and_recovers() {
    let (mut redis, s) = store("").await;
    s.add_route(1, "k", "c").await.unwrap();
    let port = redis.addr.port();
    redis.kill();
    let err = tokio::time::timeout(Duration::from_secs(10), s.add_route(1, "k2", "c"))
        .await
        .expect("the call returns instead of hanging")
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err:?}");
    assert_eq!(err.engine(), "redis");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the client's error is kept: {err:?}"
    );
    let _back = herald_testkit::redis_on(port);
    let mut ok = false;
    for _ in 0..100 {
        if s.add_route(1, "k3", "c").await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the store did not recover after Redis came back");
    assert_eq!(
        s.servers_by_keys(&["k3".into()]).await.unwrap(),
        vec![Some("c".into())]
    );
}

/// Offsets are handed out once each, however many logics append at the same
/// time; a Redis that lost its data starts a new epoch.
#[tokio::test]
async fn history_positions_are_atomic_and_epochs_change_with_lost_data() {
    use herald_store::{HistoryPolicy, HistoryStore};
    let (redis, s) = store("h:").await;
    let p = HistoryPolicy {
        size: 1000,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(600),
    };
    let mut tasks = Vec::new();
    for t in 0..8u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..50u8 {
                let a = s
                    .append("chat://race", &p, bytes::Bytes::from(vec![t, i]))
                    .await
                    .unwrap();
                got.push(a);
            }
            got
        }));
    }
    let mut offsets = Vec::new();
    let mut epochs = std::collections::HashSet::new();
    for t in tasks {
        for a in t.await.unwrap() {
            offsets.push(a.offset);
            epochs.insert(a.epoch);
        }
    }
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=400).collect::<Vec<u64>>());
    assert_eq!(epochs.len(), 1);
    let epoch = epochs.into_iter().next().unwrap();
    let r = s.read("chat://race", &p, &epoch, 0, 0).await.unwrap();
    assert!(r.complete);
    assert_eq!(r.entries.len(), 400);
    assert!(r.entries.windows(2).all(|w| w[1].0 == w[0].0 + 1));

    // The data is lost (a restart without persistence): a new epoch, offsets from 1.
    let client = redis::Client::open(redis.redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let r = s.read("chat://race", &p, &epoch, 400, 0).await.unwrap();
    assert_ne!(r.epoch, epoch);
    assert!(!r.complete);
    let a = s
        .append("chat://race", &p, bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    assert_eq!((a.epoch, a.offset), (r.epoch, 1));
}

/// A retracted push stays retracted as long as its entry can be read: a later
/// append keeps the entries alive for another `ttl`, and the retraction with
/// them (otherwise a push the API reported as failed is replayed).
#[tokio::test]
async fn history_retraction_lasts_as_long_as_the_entry() {
    use herald_store::{HistoryPolicy, HistoryStore};
    let (_redis, s) = store("rt:").await;
    let p = HistoryPolicy {
        size: 10,
        ttl: Duration::from_millis(2000),
        meta_ttl: Duration::from_secs(600),
    };
    let a = s
        .append("chat://rt", &p, bytes::Bytes::from_static(b"failed"))
        .await
        .unwrap();
    s.retract("chat://rt", &a.epoch, a.offset).await.unwrap();
    // Time passes (TTLs are Redis's clock): half the ttl, another push…
    tokio::time::sleep(Duration::from_millis(1000)).await;
    s.append("chat://rt", &p, bytes::Bytes::from_static(b"ok"))
        .await
        .unwrap();
    // … past the first push's ttl, within the second's.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = s.read("chat://rt", &p, &a.epoch, 0, 0).await.unwrap();
    let got: Vec<u64> = r.entries.iter().map(|(o, _)| *o).collect();
    assert_eq!(got, vec![2], "{r:?}");
}

/// Retracting in a stream that keeps no entries (size 0) leaves no key
/// behind that never expires.
#[tokio::test]
async fn history_retraction_without_entries_leaves_no_immortal_key() {
    use herald_store::{HistoryPolicy, HistoryStore};
    let (redis, s) = store("rt0:").await;
    let p = HistoryPolicy {
        size: 0,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(600),
    };
    let a = s
        .append("chat://bare", &p, bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    s.retract("chat://bare", &a.epoch, a.offset).await.unwrap();
    let client = redis::Client::open(redis.redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("rt0:histrt_{chat://bare}")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_ne!(ttl, -1, "the retracted set never expires");
}

/// A stream created by a read (nobody pushed to it) is kept only `ttl`, not
/// `meta_ttl`: one client walking through room names must not fill Redis for
/// a day. Its first push keeps it for `meta_ttl`.
#[tokio::test]
async fn history_streams_created_by_reads_live_only_ttl() {
    use herald_store::{HistoryPolicy, HistoryStore};
    let (redis, s) = store("rd:").await;
    let p = HistoryPolicy {
        size: 10,
        ttl: Duration::from_secs(60),
        meta_ttl: Duration::from_secs(24 * 3600),
    };
    let client = redis::Client::open(redis.redis_url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let r = s.read("chat://empty", &p, "", 0, 0).await.unwrap();
    assert_eq!(r.top, 0);
    let left = pttl(&mut con, "rd:histmeta_{chat://empty}").await;
    assert!(
        0 < left && left <= 60_000,
        "a read-only stream kept {left} ms"
    );
    s.append("chat://empty", &p, bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    let left = pttl(&mut con, "rd:histmeta_{chat://empty}").await;
    assert!(left > 60_000, "a stream with a message kept only {left} ms");
    // Reading it again keeps it for meta_ttl, and its epoch stays.
    let again = s.read("chat://empty", &p, &r.epoch, 0, 0).await.unwrap();
    assert_eq!((again.epoch, again.top), (r.epoch, 1));
    assert!(pttl(&mut con, "rd:histmeta_{chat://empty}").await > 60_000);
}

async fn pttl(con: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(con).await.unwrap()
}
