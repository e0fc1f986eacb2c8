//! The etcd registry against a real, private etcd.
#![allow(clippy::unwrap_used)]

// `cargo test -p herald-discovery` turns the feature on (herald-discovery is its own
// dev-dependency with it); this file never compiles to no tests.
#[cfg(not(feature = "etcd"))]
compile_error!(
    "tests/etcd.rs tests the etcd registry: build herald-discovery with its `etcd` feature"
);

use std::collections::BTreeMap;
use std::time::Duration;

use herald_discovery::{
    EtcdConfig, EtcdRegistry, Instance, Instances, Registry, RegistryErrorKind, CLAIM_OWNER,
    COMET_APPID, LOGIC_APPID,
};
use tokio::sync::watch;
use tokio::time::Instant;

fn config(endpoint: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        env: "test".into(),
        lease_ttl: Duration::from_secs(2),
        dial_timeout: Duration::from_secs(1),
        call_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// The registry's logs, shown for failing tests.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("herald_discovery=debug")
        .with_test_writer()
        .try_init();
}

async fn registry(etcd: &herald_testkit::Engine) -> EtcdRegistry {
    logs();
    EtcdRegistry::connect(config(&etcd.etcd_endpoint()))
        .await
        .unwrap()
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn comet(hostname: &str, zone: &str) -> Instance {
    Instance {
        region: "sh".into(),
        zone: zone.into(),
        env: "test".into(),
        appid: COMET_APPID.into(),
        hostname: hostname.into(),
        addrs: vec![format!("grpc://{hostname}")],
        version: "1.2.3".into(),
        latest_timestamp: 0,
        metadata: meta(&[("weight", "10"), ("offline", "false"), ("conn_count", "0")]),
    }
}

/// Waits (at most `within`) until the watched list satisfies `pred`; panics with
/// the last list otherwise.
async fn until(
    rx: &mut watch::Receiver<Instances>,
    within: Duration,
    what: &str,
    pred: impl Fn(&[Instance]) -> bool,
) -> Instances {
    let deadline = Instant::now() + within;
    loop {
        let cur = rx.borrow_and_update().clone();
        if pred(&cur) {
            return cur;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("{what}: not seen within {within:?}; last list: {cur:?}");
        }
    }
}

fn hostnames(list: &[Instance]) -> Vec<&str> {
    list.iter().map(|i| i.hostname.as_str()).collect()
}

#[tokio::test]
async fn register_update_deregister_seen_by_watcher() {
    let etcd = herald_testkit::etcd();
    let reg = registry(&etcd).await;
    let mut w = reg.watch(COMET_APPID).await.unwrap();
    assert!(w.borrow().is_empty());

    let me = comet("10.0.0.1:3109", "z1");
    let r = reg.register(me.clone()).await.unwrap();
    let list = until(&mut w, Duration::from_secs(5), "registration", |l| {
        !l.is_empty()
    })
    .await;
    let seen = &list[0];
    assert!(seen.latest_timestamp > 0);
    assert_eq!(
        Instance {
            latest_timestamp: 0,
            ..seen.clone()
        },
        me
    );

    // The key layout, and goim's JSON shape in the value.
    let kv = reg
        .client()
        .get(b"/herald/goim.comet/test/10.0.0.1:3109")
        .await
        .unwrap()
        .expect("key <prefix>/<appid>/<env>/<hostname>");
    assert_ne!(kv.lease, 0, "the key is attached to a lease");
    let json: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!(json["hostname"], "10.0.0.1:3109");
    assert_eq!(json["addrs"][0], "grpc://10.0.0.1:3109");
    assert_eq!(json["metadata"]["weight"], "10");

    r.update(meta(&[("weight", "10"), ("conn_count", "42")]))
        .await
        .unwrap();
    let list = until(&mut w, Duration::from_secs(5), "metadata update", |l| {
        l.first().and_then(|i| i.meta_i64("conn_count")) == Some(42)
    })
    .await;
    assert!(list[0].latest_timestamp >= seen.latest_timestamp);
    assert_eq!(list[0].metadata.get("offline"), None);

    // Revoking the lease removes the key at once, well before the TTL.
    let start = Instant::now();
    r.deregister().await.unwrap();
    until(&mut w, Duration::from_secs(1), "deregistration", |l| {
        l.is_empty()
    })
    .await;
    assert!(start.elapsed() < Duration::from_secs(1));
    // Deregistering twice, or updating afterwards, is harmless.
    r.deregister().await.unwrap();
    r.update(meta(&[("conn_count", "1")])).await.unwrap();
}

#[tokio::test]
async fn every_zone_of_the_env_is_watched() {
    let etcd = herald_testkit::etcd();
    let reg = registry(&etcd).await;
    let a = reg.register(comet("b:3109", "z1")).await.unwrap();
    let b = reg.register(comet("a:3109", "z2")).await.unwrap();
    // Another env (a registry configured for it) and another appid are not part
    // of the watched list.
    let prod = EtcdRegistry::connect(EtcdConfig {
        env: "prod".into(),
        ..config(&etcd.etcd_endpoint())
    })
    .await
    .unwrap();
    let other_env = prod
        .register(Instance {
            env: "prod".into(),
            ..comet("c:3109", "z1")
        })
        .await
        .unwrap();
    let logic = reg
        .register(Instance {
            appid: LOGIC_APPID.into(),
            ..comet("d:3119", "z1")
        })
        .await
        .unwrap();

    // A watcher started after the registrations sees them in its first list.
    let w = reg.watch(COMET_APPID).await.unwrap();
    let list = w.borrow().clone();
    assert_eq!(hostnames(&list), ["a:3109", "b:3109"], "sorted by hostname");
    assert_eq!(list[0].zone, "z2");
    assert_eq!(list[1].zone, "z1");
    let logics = reg.watch(LOGIC_APPID).await.unwrap();
    assert_eq!(hostnames(&logics.borrow()), ["d:3119"]);
    for r in [a, b, other_env, logic] {
        r.deregister().await.unwrap();
    }
}

#[tokio::test]
async fn registration_comes_back_after_lease_loss() {
    let etcd = herald_testkit::etcd();
    let reg = registry(&etcd).await;
    let mut w = reg.watch(COMET_APPID).await.unwrap();
    let r = reg.register(comet("10.0.0.2:3109", "z1")).await.unwrap();
    r.update(meta(&[("conn_count", "7")])).await.unwrap();
    until(&mut w, Duration::from_secs(5), "registration", |l| {
        l.first().and_then(|i| i.meta_i64("conn_count")) == Some(7)
    })
    .await;

    // Someone else revokes the lease: the key goes away with it.
    let key = b"/herald/goim.comet/test/10.0.0.2:3109";
    let old = reg.client().get(key).await.unwrap().unwrap().lease;
    reg.client().lease_revoke(old).await.unwrap();
    until(
        &mut w,
        Duration::from_secs(2),
        "key removed with its lease",
        |l| l.is_empty(),
    )
    .await;

    // The keeper notices at its next refresh and registers again, with the
    // latest metadata, on a new lease.
    let list = until(&mut w, Duration::from_secs(5), "re-registration", |l| {
        !l.is_empty()
    })
    .await;
    assert_eq!(list[0].meta_i64("conn_count"), Some(7));
    let new = reg.client().get(key).await.unwrap().unwrap().lease;
    assert_ne!(new, old);

    // The new lease is kept alive: still there after several TTLs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(hostnames(&w.borrow()), ["10.0.0.2:3109"]);
    r.deregister().await.unwrap();
}

#[tokio::test]
async fn dropped_registration_expires_with_its_lease() {
    let etcd = herald_testkit::etcd();
    let reg = registry(&etcd).await;
    let mut w = reg.watch(COMET_APPID).await.unwrap();
    let r = reg.register(comet("10.0.0.3:3109", "z1")).await.unwrap();
    until(&mut w, Duration::from_secs(5), "registration", |l| {
        !l.is_empty()
    })
    .await;
    drop(r);
    // No keep-alive any more: gone once the 2 s lease runs out.
    until(&mut w, Duration::from_secs(6), "expiry after drop", |l| {
        l.is_empty()
    })
    .await;
}

#[tokio::test]
async fn values_that_are_not_instances_are_skipped() {
    let etcd = herald_testkit::etcd();
    let reg = registry(&etcd).await;
    let c = reg.client();
    c.put(b"/herald/goim.comet/test/junk:1", b"{not json", 0)
        .await
        .unwrap();
    let mut w = reg.watch(COMET_APPID).await.unwrap();
    assert!(w.borrow().is_empty());
    let r = reg.register(comet("ok:3109", "z1")).await.unwrap();
    c.put(b"/herald/goim.comet/test/junk:2", b"[1,2]", 0)
        .await
        .unwrap();
    until(&mut w, Duration::from_secs(5), "valid instance", |l| {
        hostnames(l) == ["ok:3109"]
    })
    .await;
    // A key deleted by hand disappears from the list too.
    assert!(c.delete(b"/herald/goim.comet/test/ok:3109").await.unwrap());
    until(&mut w, Duration::from_secs(5), "deleted key", |l| {
        l.is_empty()
    })
    .await;
    drop(r);
}

#[tokio::test]
async fn survives_an_etcd_restart() {
    let mut etcd = herald_testkit::etcd();
    let port = etcd.addr.port();
    let reg = registry(&etcd).await;
    let mut w = reg.watch(COMET_APPID).await.unwrap();
    let r = reg.register(comet("10.0.0.4:3109", "z1")).await.unwrap();
    until(&mut w, Duration::from_secs(5), "registration", |l| {
        !l.is_empty()
    })
    .await;
    let key = b"/herald/goim.comet/test/10.0.0.4:3109";
    let old = reg.client().get(key).await.unwrap().unwrap().lease;

    // Crash etcd; while it is down, updates fail (and are kept).
    etcd.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let down = r.update(meta(&[("conn_count", "3")])).await;
    assert!(
        matches!(&down, Err(e) if e.kind() == RegistryErrorKind::Unavailable),
        "{down:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Same port, same data dir.
    let _etcd2 = herald_testkit::etcd_on(port);

    // The registration is made again on a new lease, with the metadata given
    // while etcd was down, and stays after the old lease has expired.
    let list = until(&mut w, Duration::from_secs(10), "re-registration", |l| {
        l.first().and_then(|i| i.meta_i64("conn_count")) == Some(3)
    })
    .await;
    assert_eq!(hostnames(&list), ["10.0.0.4:3109"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lease = reg.client().get(key).await.unwrap().unwrap().lease;
        if lease != old {
            break;
        }
        assert!(Instant::now() < deadline, "still on the old lease");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(reg.client().get(key).await.unwrap().is_some());

    // The watcher resumed: later changes reach it.
    let other = reg.register(comet("10.0.0.5:3109", "z2")).await.unwrap();
    until(
        &mut w,
        Duration::from_secs(5),
        "registration after restart",
        |l| hostnames(l) == ["10.0.0.4:3109", "10.0.0.5:3109"],
    )
    .await;
    r.deregister().await.unwrap();
    until(
        &mut w,
        Duration::from_secs(2),
        "deregistration after restart",
        |l| hostnames(l) == ["10.0.0.5:3109"],
    )
    .await;
    other.deregister().await.unwrap();
}

#[tokio::test]
async fn unreachable_endpoint_is_a_clear_error() {
    logs();
    let port = herald_testkit::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    let err = EtcdRegistry::connect(config(&endpoint))
        .await
        .err()
        .expect("nothing listens there");
    assert_eq!(err.kind(), RegistryErrorKind::Unavailable, "{err:?}");
    assert_eq!(err.engine(), "etcd");
    let msg = err.to_string();
    assert!(msg.contains(&endpoint), "{msg}");
    // The client's error is kept as the cause.
    assert!(std::error::Error::source(&err).is_some(), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn next_endpoint_is_tried() {
    let etcd = herald_testkit::etcd();
    logs();
    let dead = format!("http://127.0.0.1:{}", herald_testkit::free_port());
    let reg = EtcdRegistry::connect(EtcdConfig {
        endpoints: vec![dead, etcd.etcd_endpoint()],
        ..config("")
    })
    .await
    .unwrap();
    let r = reg.register(comet("e:3109", "z1")).await.unwrap();
    let w = reg.watch(COMET_APPID).await.unwrap();
    assert_eq!(hostnames(&w.borrow()), ["e:3109"]);
    r.deregister().await.unwrap();
}

fn job(hostname: &str) -> Instance {
    Instance {
        appid: "herald.job".into(),
        hostname: hostname.into(),
        ..Default::default()
    }
}

fn owner_of(list: &[Instance], name: &str) -> Option<String> {
    list.iter()
        .find(|i| i.hostname == name)
        .and_then(|i| i.metadata.get(CLAIM_OWNER).cloned())
}

#[tokio::test]
async fn a_claim_has_one_holder_and_ends_with_its_lease() {
    const SCOPE: &str = "herald.job.partition";
    let etcd = herald_testkit::etcd();
    let reg = registry(&etcd).await;
    let other = registry(&etcd).await;
    let mut w = reg.watch(SCOPE).await.unwrap();
    let a = reg.register(job("a")).await.unwrap();
    let b = other.register(job("b")).await.unwrap();

    // Two registrations (two clients) race for the same name: exactly one wins.
    let (ca, cb) = tokio::join!(a.claim(SCOPE, "7"), b.claim(SCOPE, "7"));
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    assert!(ca != cb, "exactly one holder: a {ca}, b {cb}");
    let (holder, loser, holder_name) = if ca { (&a, &b, "a") } else { (&b, &a, "b") };
    assert!(holder.claim(SCOPE, "7").await.unwrap(), "held again");
    let list = until(&mut w, Duration::from_secs(5), "claim seen", |l| {
        owner_of(l, "7").is_some()
    })
    .await;
    assert_eq!(owner_of(&list, "7").as_deref(), Some(holder_name));

    // The loser's release leaves it alone; the holder's frees it for the loser.
    loser.release(SCOPE, "7").await.unwrap();
    assert!(!loser.claim(SCOPE, "7").await.unwrap());
    holder.release(SCOPE, "7").await.unwrap();
    until(&mut w, Duration::from_secs(5), "claim released", |l| {
        owner_of(l, "7").is_none()
    })
    .await;
    assert!(loser.claim(SCOPE, "7").await.unwrap());

    // Deregistering ends every claim at once.
    assert!(!holder.claim(SCOPE, "7").await.unwrap());
    loser.deregister().await.unwrap();
    until(
        &mut w,
        Duration::from_secs(5),
        "claims end with the lease",
        |l| owner_of(l, "7").is_none(),
    )
    .await;
    assert!(holder.claim(SCOPE, "7").await.unwrap());
    holder.deregister().await.unwrap();
}

#[tokio::test]
async fn a_lost_lease_is_reported_and_takes_its_claims() {
    const SCOPE: &str = "herald.job.partition";
    let etcd = herald_testkit::etcd();
    let reg = registry(&etcd).await;
    let mut w = reg.watch(SCOPE).await.unwrap();
    let a = reg.register(job("a")).await.unwrap();
    let mut losses = a.lease_losses();
    assert_eq!(*losses.borrow_and_update(), 0);
    assert!(a.claim(SCOPE, "1").await.unwrap());
    until(&mut w, Duration::from_secs(5), "claim seen", |l| {
        owner_of(l, "1").is_some()
    })
    .await;

    // Someone revokes the lease: the claim goes with it and the holder is told.
    let key = b"/herald/herald.job/test/a";
    let lease = reg.client().get(key).await.unwrap().unwrap().lease;
    reg.client().lease_revoke(lease).await.unwrap();
    until(
        &mut w,
        Duration::from_secs(2),
        "claim gone with the lease",
        |l| owner_of(l, "1").is_none(),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(5), losses.changed())
        .await
        .expect("the loss is reported within the TTL")
        .unwrap();
    assert_eq!(*losses.borrow_and_update(), 1);

    // Re-registration does not bring the claim back: the holder claims again.
    let mut jobs = reg.watch("herald.job").await.unwrap();
    until(&mut jobs, Duration::from_secs(5), "registered again", |l| {
        !l.is_empty()
    })
    .await;
    assert_eq!(owner_of(&w.borrow(), "1"), None);
    assert!(a.claim(SCOPE, "1").await.unwrap());
    a.deregister().await.unwrap();
}
