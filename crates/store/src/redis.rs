//! Routes and online counts on Redis, in goim's key layout, with goim's bugs fixed.
//!
//! | key | type | content |
//! |---|---|---|
//! | `<prefix>mid_<mid>` | hash | connection key → server id (members with mid > 0) |
//! | `<prefix>key_<key>` | string | server id |
//! | `<prefix>ol_<server>` | hash | fields `"0"`…`"63"` → JSON `{"server","room_count","updated"}` |
//! | `<prefix>kmid_<key>` | string | the key's member id (herald's addition, so a key that moves to another member leaves the previous member's hash) |
//!
//! Every write sets the shared TTL. Differences from goim: removing a route is one
//! Lua script that deletes only if the route still points at the caller's server; an
//! online report replaces the whole `ol_` hash atomically, so partitions whose rooms
//! emptied are cleared; a report is read back with one `HGETALL` (goim made 64 round
//! trips). Readers merge all 64 fields, so the partition function need not match
//! another implementation's.
//!
//! Streams' history (`histmeta_`, `hist_`, `histrt_` keys) is described in
//! `redis_history`.
//!
//! Connections may use TLS (`rediss://`, a private CA, optionally a client
//! certificate) and an ACL user or password from the URL (`herald_tls::redis::client`).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use crate::{OnlineStore, ServerOnline, SessionStore, StoreError, StoreErrorKind, StoreResult};

/// Fields of an `ol_` hash (goim's partition count).
const PARTITIONS: u64 = 64;

/// Removes `key_<key>` and the member's field only while they point at ARGV[1].
/// KEYS[1] = key_<key>, KEYS[2] = mid_<mid> (or ""), ARGV[1] = server, ARGV[2] = key.
const REMOVE: &str = r#"
local removed = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[3])
  removed = 1
end
if KEYS[2] ~= '' and redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[1] then
  redis.call('HDEL', KEYS[2], ARGV[2])
end
return removed
"#;

/// Records a route. KEYS[1] = key_<key>, KEYS[2] = mid_<mid> (or ""),
/// KEYS[3] = kmid_<key>; ARGV[1] = server, ARGV[2] = key, ARGV[3] = TTL,
/// ARGV[4] = mid, ARGV[5] = the hash-key prefix for mids (`<prefix>mid_`). A key
/// that moves to another member is removed from the previous member's hash.
const ADD: &str = r#"
local previous = redis.call('GET', KEYS[3])
if previous and previous ~= ARGV[4] and previous ~= '0' then
  redis.call('HDEL', ARGV[5] .. previous, ARGV[2])
end
if KEYS[2] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[3])
return 1
"#;

/// Extends the route's TTL if it still points at ARGV[1]; returns 1 if it did.
/// KEYS as for REMOVE, ARGV[3] = TTL seconds.
const REFRESH: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  if KEYS[2] ~= '' then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
  return 1
end
return 0
"#;

/// One `ol_` field as goim writes it.
#[derive(Serialize, Deserialize)]
struct Partition {
    server: String,
    room_count: HashMap<String, i32>,
    updated: i64,
}

/// The Redis store. Cheap to clone; reconnects by itself.
#[derive(Clone)]
pub struct RedisStore {
    pub(crate) con: ConnectionManager,
    pub(crate) prefix: String,
    ttl_secs: u64,
    add: Script,
    remove: Script,
    refresh: Script,
    pub(crate) history_append: Script,
    pub(crate) history_read: Script,
    pub(crate) history_retract: Script,
}

/// The engine name errors carry.
const ENGINE: &str = "redis";

pub(crate) fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, ENGINE, "").caused_by(e)
}

fn partition(room: &str) -> u64 {
    // FNV-1a: stable across processes and versions.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in room.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h % PARTITIONS
}

impl RedisStore {
    /// Connects to `url` (`redis://[user:password@]host:port/db`, or `rediss://`
    /// with `tls`; see `herald_tls::redis::client`). Keys get `prefix` (may be empty) and live `ttl`
    /// after their last write.
    pub async fn connect(
        url: &str,
        tls: &herald_tls::ClientTls,
        prefix: &str,
        ttl: Duration,
    ) -> StoreResult<RedisStore> {
        let client = herald_tls::redis::client(url, tls).map_err(|e| {
            StoreError::new(StoreErrorKind::Unavailable, ENGINE, "client settings").caused_by(e)
        })?;
        // Bounded waits: with Redis down a call fails within seconds (the push API
        // answers 503) instead of queueing behind reconnection attempts.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let mut con = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(unavailable)?;
        // Connecting sends no command: ask one, so a refused password or ACL user
        // is reported now, by the caller that can name the setting.
        redis::cmd("PING")
            .query_async::<()>(&mut con)
            .await
            .map_err(unavailable)?;
        Ok(RedisStore {
            con,
            prefix: prefix.to_string(),
            ttl_secs: ttl.as_secs().max(1),
            add: Script::new(ADD),
            remove: Script::new(REMOVE),
            refresh: Script::new(REFRESH),
            history_append: Script::new(crate::redis_history::APPEND),
            history_read: Script::new(crate::redis_history::READ),
            history_retract: Script::new(crate::redis_history::RETRACT),
        })
    }

    fn key_key(&self, key: &str) -> String {
        format!("{}key_{key}", self.prefix)
    }

    fn kmid_key(&self, key: &str) -> String {
        format!("{}kmid_{key}", self.prefix)
    }

    fn mid_key(&self, mid: i64) -> String {
        if mid > 0 {
            format!("{}mid_{mid}", self.prefix)
        } else {
            String::new()
        }
    }

    fn online_key(&self, server: &str) -> String {
        format!("{}ol_{server}", self.prefix)
    }

    /// A route script call with the keys and leading arguments every route script
    /// takes: KEYS = key_, mid_ (or ""), kmid_; ARGV[1] = server, ARGV[2] = key.
    fn route_call<'a>(
        &self,
        script: &'a Script,
        mid: i64,
        key: &str,
        server: &str,
    ) -> redis::ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        call.key(self.key_key(key))
            .key(self.mid_key(mid))
            .key(self.kmid_key(key))
            .arg(server)
            .arg(key);
        call
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn ping(&self) -> StoreResult<()> {
        let mut con = self.con.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn add_route(&self, mid: i64, key: &str, server: &str) -> StoreResult<()> {
        let mut con = self.con.clone();
        let mut call = self.route_call(&self.add, mid, key, server);
        call.arg(self.ttl_secs)
            .arg(mid.max(0))
            .arg(format!("{}mid_", self.prefix));
        call.invoke_async::<i64>(&mut con)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn refresh_route(&self, mid: i64, key: &str, server: &str) -> StoreResult<bool> {
        let mut con = self.con.clone();
        let mut call = self.route_call(&self.refresh, mid, key, server);
        call.arg(self.ttl_secs);
        let live: i64 = call.invoke_async(&mut con).await.map_err(unavailable)?;
        Ok(live == 1)
    }

    async fn remove_route(&self, mid: i64, key: &str, server: &str) -> StoreResult<bool> {
        let mut con = self.con.clone();
        let removed: i64 = self
            .route_call(&self.remove, mid, key, server)
            .invoke_async(&mut con)
            .await
            .map_err(unavailable)?;
        Ok(removed == 1)
    }

    async fn servers_by_keys(&self, keys: &[String]) -> StoreResult<Vec<Option<String>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let names: Vec<String> = keys.iter().map(|k| self.key_key(k)).collect();
        let mut cmd = redis::cmd("MGET");
        for n in &names {
            cmd.arg(n);
        }
        cmd.query_async::<Vec<Option<String>>>(&mut con)
            .await
            .map_err(unavailable)
    }

    async fn keys_by_mids(&self, mids: &[i64]) -> StoreResult<Vec<(String, String)>> {
        let mids: Vec<i64> = mids.iter().copied().filter(|m| *m > 0).collect();
        if mids.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for m in &mids {
            pipe.hgetall(self.mid_key(*m));
        }
        let maps: Vec<HashMap<String, String>> =
            pipe.query_async(&mut con).await.map_err(unavailable)?;
        Ok(maps.into_iter().flatten().collect())
    }
}

#[async_trait]
impl OnlineStore for RedisStore {
    async fn put_server_online(&self, online: &ServerOnline) -> StoreResult<()> {
        let mut parts: HashMap<u64, HashMap<String, i32>> = HashMap::new();
        for (room, n) in &online.room_count {
            parts
                .entry(partition(room))
                .or_default()
                .insert(room.clone(), *n);
        }
        if parts.is_empty() {
            // Keep the timestamp of an empty comet: one empty partition.
            parts.insert(0, HashMap::new());
        }
        let key = self.online_key(&online.server);
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key).ignore();
        for (p, rooms) in parts {
            let value = serde_json::to_string(&Partition {
                server: online.server.clone(),
                room_count: rooms,
                updated: online.updated,
            })
            .map_err(|e| {
                StoreError::new(StoreErrorKind::Corrupt, ENGINE, "online counts to write")
                    .caused_by(e)
            })?;
            pipe.hset(&key, p.to_string(), value).ignore();
        }
        pipe.expire(&key, self.ttl_secs as i64).ignore();
        let mut con = self.con.clone();
        pipe.query_async::<()>(&mut con).await.map_err(unavailable)
    }

    async fn server_online(&self, server: &str) -> StoreResult<Option<ServerOnline>> {
        let mut con = self.con.clone();
        let fields: HashMap<String, String> = con
            .hgetall(self.online_key(server))
            .await
            .map_err(unavailable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let mut out = ServerOnline {
            server: server.to_string(),
            ..Default::default()
        };
        for value in fields.values() {
            let p: Partition = serde_json::from_str(value).map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Corrupt,
                    ENGINE,
                    format!("online counts of {server}"),
                )
                .caused_by(e)
            })?;
            out.room_count.extend(p.room_count);
            out.updated = out.updated.max(p.updated);
        }
        Ok(Some(out))
    }

    async fn remove_server_online(&self, server: &str) -> StoreResult<()> {
        let mut con = self.con.clone();
        con.del::<_, ()>(self.online_key(server))
            .await
            .map_err(unavailable)
    }
}
