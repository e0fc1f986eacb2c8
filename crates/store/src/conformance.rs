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

/// History: positions grow by one per append, reads return what followed a
/// position, trimming and epoch changes are reported as incomplete, retracted
/// entries are left out without counting as lost.
pub async fn history(h: &dyn crate::HistoryStore) -> CheckResult {
    use bytes::Bytes;
    let e = |e: crate::StoreError| e.to_string();
    let p = crate::HistoryPolicy {
        size: 3,
        ttl: std::time::Duration::from_secs(60),
        meta_ttl: std::time::Duration::from_secs(600),
    };
    let stream = format!("conf://history-{}", crate::history::new_epoch());
    // A read before any append creates the epoch: what follows is in it.
    let empty = h.read(&stream, &p, "", 0, 0).await.map_err(e)?;
    check(
        empty.top == 0 && empty.entries.is_empty() && !empty.epoch.is_empty(),
        || format!("read of a new stream: {empty:?}"),
    )?;
    let mut offsets = Vec::new();
    for i in 1..=5u8 {
        let a = h
            .append(&stream, &p, Bytes::from(vec![i]))
            .await
            .map_err(e)?;
        check(a.epoch == empty.epoch, || {
            format!("epoch changed: {} → {}", empty.epoch, a.epoch)
        })?;
        offsets.push(a.offset);
    }
    check(offsets == vec![1, 2, 3, 4, 5], || {
        format!("offsets: {offsets:?}")
    })?;
    let epoch = empty.epoch;
    // Size 3 keeps 3, 4, 5.
    let r = h.read(&stream, &p, &epoch, 2, 0).await.map_err(e)?;
    let got: Vec<(u64, Vec<u8>)> = r.entries.iter().map(|(o, b)| (*o, b.to_vec())).collect();
    check(
        r.complete && r.top == 5 && got == vec![(3, vec![3]), (4, vec![4]), (5, vec![5])],
        || format!("read after 2: {r:?}"),
    )?;
    let r = h.read(&stream, &p, &epoch, 3, 1).await.map_err(e)?;
    check(
        r.complete && r.entries.len() == 1 && r.entries[0].0 == 4,
        || format!("read after 3, limit 1: {r:?}"),
    )?;
    // 2 was trimmed: a client at 1 missed it.
    let r = h.read(&stream, &p, &epoch, 1, 0).await.map_err(e)?;
    check(!r.complete, || format!("read after a trimmed entry: {r:?}"))?;
    // At the top: nothing to read, nothing lost.
    let r = h.read(&stream, &p, &epoch, 5, 0).await.map_err(e)?;
    check(r.complete && r.entries.is_empty(), || {
        format!("read at the top: {r:?}")
    })?;
    // Another epoch: nothing is replayed.
    let r = h.read(&stream, &p, "other", 2, 0).await.map_err(e)?;
    check(
        !r.complete && r.entries.is_empty() && r.epoch == epoch,
        || format!("read in another epoch: {r:?}"),
    )?;
    // A retracted entry is skipped, and not a loss.
    h.retract(&stream, &epoch, 4).await.map_err(e)?;
    let r = h.read(&stream, &p, &epoch, 2, 0).await.map_err(e)?;
    let got: Vec<u64> = r.entries.iter().map(|(o, _)| *o).collect();
    check(r.complete && got == vec![3, 5], || {
        format!("read after a retraction: {r:?}")
    })?;
    // Size 0: positions without entries.
    let bare = format!("{stream}-bare");
    let p0 = crate::HistoryPolicy { size: 0, ..p };
    let a = h
        .append(&bare, &p0, Bytes::from_static(b"x"))
        .await
        .map_err(e)?;
    let b = h
        .append(&bare, &p0, Bytes::from_static(b"y"))
        .await
        .map_err(e)?;
    check(a.offset == 1 && b.offset == 2, || {
        format!("size 0 offsets: {a:?} {b:?}")
    })?;
    let r = h.read(&bare, &p0, &a.epoch, 1, 0).await.map_err(e)?;
    check(!r.complete && r.entries.is_empty() && r.top == 2, || {
        format!("size 0 read: {r:?}")
    })?;
    Ok(())
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
