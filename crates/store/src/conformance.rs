//! The behaviour every [`SessionStore`] / [`OnlineStore`] backend must show, as
//! reusable checks run by each backend's tests against its real engine.

use std::collections::HashMap;

use crate::{OnlineStore, ServerOnline, SessionStore};

/// A failed check.
pub type CheckResult = Result<(), String>;

fn check(cond: bool, what: impl FnOnce() -> String) -> CheckResult {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// Routes by key and by member; anonymous members have no member index.
pub async fn routes(s: &dyn SessionStore) -> CheckResult {
    let e = |e: crate::StoreError| e.to_string();
    s.add_route(7, "conf-a", "c1").await.map_err(e)?;
    s.add_route(7, "conf-b", "c2").await.map_err(e)?;
    s.add_route(0, "conf-anon", "c1").await.map_err(e)?;
    let got = s
        .servers_by_keys(&["conf-a".into(), "conf-x".into(), "conf-anon".into()])
        .await
        .map_err(e)?;
    check(
        got == vec![Some("c1".into()), None, Some("c1".into())],
        || format!("servers_by_keys: {got:?}"),
    )?;
    let mut by_mid = s.keys_by_mids(&[7, 8]).await.map_err(e)?;
    by_mid.sort();
    check(
        by_mid
            == vec![
                ("conf-a".into(), "c1".into()),
                ("conf-b".into(), "c2".into()),
            ],
        || format!("keys_by_mids: {by_mid:?}"),
    )?;
    check(s.keys_by_mids(&[0]).await.map_err(e)?.is_empty(), || {
        "mid 0 indexed".into()
    })
}

/// A route is removed only by the server it points at (a key that moved to another
/// comet keeps its new route); refresh reports whether the route still exists.
pub async fn remove_only_own_route(s: &dyn SessionStore) -> CheckResult {
    let e = |e: crate::StoreError| e.to_string();
    s.add_route(11, "conf-k", "old").await.map_err(e)?;
    s.add_route(11, "conf-k", "new").await.map_err(e)?;
    check(
        !s.remove_route(11, "conf-k", "old").await.map_err(e)?,
        || "removed a route of another server".into(),
    )?;
    let got = s.servers_by_keys(&["conf-k".into()]).await.map_err(e)?;
    check(got == vec![Some("new".into())], || {
        format!("route lost: {got:?}")
    })?;
    check(s.keys_by_mids(&[11]).await.map_err(e)?.len() == 1, || {
        "member index lost".into()
    })?;
    check(
        s.refresh_route(11, "conf-k", "new").await.map_err(e)?,
        || "refresh of a live route failed".into(),
    )?;
    check(
        !s.refresh_route(11, "conf-k", "old").await.map_err(e)?,
        || "refreshed another server's route".into(),
    )?;
    check(
        s.remove_route(11, "conf-k", "new").await.map_err(e)?,
        || "own route not removed".into(),
    )?;
    let got = s.servers_by_keys(&["conf-k".into()]).await.map_err(e)?;
    check(got == vec![None], || format!("route left behind: {got:?}"))?;
    check(s.keys_by_mids(&[11]).await.map_err(e)?.is_empty(), || {
        "member index left behind".into()
    })?;
    check(
        !s.refresh_route(11, "conf-k", "new").await.map_err(e)?,
        || "refreshed a removed route".into(),
    )
}

/// A key taken over by another member (an account switch on the same device) is
/// no longer reachable through the previous member.
pub async fn key_changes_member(s: &dyn SessionStore) -> CheckResult {
    let e = |e: crate::StoreError| e.to_string();
    s.add_route(21, "conf-device", "c1").await.map_err(e)?;
    s.add_route(22, "conf-device", "c1").await.map_err(e)?;
    let old = s.keys_by_mids(&[21]).await.map_err(e)?;
    check(old.is_empty(), || {
        format!("previous member still reaches the key: {old:?}")
    })?;
    let new = s.keys_by_mids(&[22]).await.map_err(e)?;
    check(new == vec![("conf-device".into(), "c1".into())], || {
        format!("new member: {new:?}")
    })?;
    check(
        s.remove_route(22, "conf-device", "c1").await.map_err(e)?,
        || "not removed".into(),
    )
}

/// An online report replaces the previous one whole (emptied rooms disappear) and
/// reads back as written.
pub async fn online_reports(s: &dyn OnlineStore) -> CheckResult {
    let e = |e: crate::StoreError| e.to_string();
    let mut rooms: HashMap<String, i32> =
        (0..200).map(|i| (format!("live://{i}"), i + 1)).collect();
    let mut report = ServerOnline {
        server: "conf-comet".into(),
        room_count: rooms.clone(),
        updated: 1_700_000_000,
    };
    s.put_server_online(&report).await.map_err(e)?;
    let got = s
        .server_online("conf-comet")
        .await
        .map_err(e)?
        .ok_or("report missing")?;
    check(got == report, || {
        format!(
            "read back {} rooms, updated {}",
            got.room_count.len(),
            got.updated
        )
    })?;
    rooms.retain(|k, _| k.ends_with('7'));
    report.room_count = rooms;
    report.updated += 10;
    s.put_server_online(&report).await.map_err(e)?;
    let got = s
        .server_online("conf-comet")
        .await
        .map_err(e)?
        .ok_or("report missing")?;
    check(got == report, || {
        format!("emptied rooms not cleared: {} rooms", got.room_count.len())
    })?;
    report.room_count.clear();
    report.updated += 10;
    s.put_server_online(&report).await.map_err(e)?;
    let got = s
        .server_online("conf-comet")
        .await
        .map_err(e)?
        .ok_or("empty report missing")?;
    check(got == report, || {
        format!("empty report read back as {got:?}")
    })?;
    s.remove_server_online("conf-comet").await.map_err(e)?;
    check(
        s.server_online("conf-comet").await.map_err(e)?.is_none(),
        || "report not removed".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use std::time::Duration;

    #[tokio::test]
    async fn memory_store_conforms() {
        let s = MemoryStore::new(Duration::from_secs(60));
        routes(&s).await.unwrap();
        remove_only_own_route(&s).await.unwrap();
        key_changes_member(&s).await.unwrap();
        online_reports(&s).await.unwrap();
    }
}
