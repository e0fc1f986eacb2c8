//! History on Redis: per stream, a hash with the epoch and the last offset, a
//! Redis stream of entries whose ids are the offsets, and a set of retracted
//! offsets.
//!
//! | key | type | content |
//! |---|---|---|
//! | `<prefix>histmeta_{<stream>}` | hash | `e` → epoch, `t` → last offset; lives `meta_ttl` after the last use (`ttl` while `t` is 0: created by a read) |
//! | `<prefix>hist_{<stream>}` | stream | entry id `<offset>-0`, field `f` → the client frame; at most `size` entries (`XADD MAXLEN`), lives `ttl` after the last append |
//! | `<prefix>histrt_{<stream>}` | set | offsets whose publish failed; lives as long as the entries |
//!
//! The braces keep a stream's three keys in one Redis Cluster slot. Appending
//! (epoch, increment, append, trim, expire) and reading (epoch, range, trimmed or
//! not) are one Lua script each, so concurrent logics agree on every position.

use async_trait::async_trait;
use bytes::Bytes;

use crate::history::{new_epoch, Appended, HistoryPolicy, HistoryRead, HistoryStore};
use crate::redis::{unavailable, RedisStore};
use crate::{StoreError, StoreErrorKind, StoreResult};

/// KEYS: meta, entries, retracted. ARGV: candidate epoch, size, ttl ms,
/// meta ttl ms, entry. Returns {epoch, offset}.
pub(crate) const APPEND: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'e', epoch, 't', 0)
end
local top = redis.call('HINCRBY', KEYS[1], 't', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], string.format('%d-0', top), 'f', ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
else
  redis.call('DEL', KEYS[2], KEYS[3])
end
return {epoch, top}
"#;

/// KEYS: meta, entries, retracted. ARGV: candidate epoch, meta ttl ms, the
/// caller's epoch, since, first id wanted (`<since + 1>-0`), limit (0: all),
/// ttl ms (how long a stream without messages is kept).
/// Returns {epoch, top, complete, {offset, entry, offset, entry, …}}.
pub(crate) const READ: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'e', epoch, 't', 0)
end
local top = tonumber(redis.call('HGET', KEYS[1], 't'))
if top > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif redis.call('PTTL', KEYS[1]) < tonumber(ARGV[7]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
end
if epoch ~= ARGV[3] then return {epoch, top, 0, {}} end
if tonumber(ARGV[4]) >= top then return {epoch, top, 1, {}} end
local range
if tonumber(ARGV[6]) > 0 then
  range = redis.call('XRANGE', KEYS[2], ARGV[5], '+', 'COUNT', ARGV[6])
else
  range = redis.call('XRANGE', KEYS[2], ARGV[5], '+')
end
local complete = 0
local out = {}
if #range > 0 then
  if range[1][1] == ARGV[5] then complete = 1 end
  for _, e in ipairs(range) do
    local offset = string.match(e[1], '^(%d+)')
    if redis.call('SISMEMBER', KEYS[3], offset) == 0 then
      table.insert(out, offset)
      table.insert(out, e[2][2])
    end
  end
end
return {epoch, top, complete, out}
"#;

/// KEYS: meta, retracted, entries. ARGV: epoch, offset.
pub(crate) const RETRACT: &str = r#"
if redis.call('HGET', KEYS[1], 'e') == ARGV[1] then
  local ttl = redis.call('PTTL', KEYS[3])
  if ttl > 0 then
    redis.call('SADD', KEYS[2], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
return 1
"#;

fn millis(d: std::time::Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

fn corrupt(what: &str) -> StoreError {
    StoreError::new(StoreErrorKind::Corrupt, "redis", what.to_string())
}

impl RedisStore {
    fn history_keys(&self, stream: &str) -> [String; 3] {
        let p = &self.prefix;
        [
            format!("{p}histmeta_{{{stream}}}"),
            format!("{p}hist_{{{stream}}}"),
            format!("{p}histrt_{{{stream}}}"),
        ]
    }
}

#[async_trait]
impl HistoryStore for RedisStore {
    async fn append(
        &self,
        stream: &str,
        policy: &HistoryPolicy,
        entry: Bytes,
    ) -> StoreResult<Appended> {
        let [meta, entries, retracted] = self.history_keys(stream);
        let mut con = self.con.clone();
        let (epoch, offset): (String, u64) = self
            .history_append
            .key(meta)
            .key(entries)
            .key(retracted)
            .arg(new_epoch())
            .arg(policy.size)
            .arg(millis(policy.ttl))
            .arg(millis(policy.meta_ttl))
            .arg(entry.as_ref())
            .invoke_async(&mut con)
            .await
            .map_err(unavailable)?;
        Ok(Appended { epoch, offset })
    }

    async fn read(
        &self,
        stream: &str,
        policy: &HistoryPolicy,
        epoch: &str,
        since: u64,
        limit: usize,
    ) -> StoreResult<HistoryRead> {
        let [meta, entries, retracted] = self.history_keys(stream);
        let mut con = self.con.clone();
        let (epoch, top, complete, flat): (String, u64, i64, Vec<Vec<u8>>) = self
            .history_read
            .key(meta)
            .key(entries)
            .key(retracted)
            .arg(new_epoch())
            .arg(millis(policy.meta_ttl))
            .arg(epoch)
            .arg(since)
            .arg(format!("{}-0", since.saturating_add(1)))
            .arg(limit)
            .arg(millis(policy.ttl.min(policy.meta_ttl)))
            .invoke_async(&mut con)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(offset), Some(frame)) = (it.next(), it.next()) {
            let offset = std::str::from_utf8(&offset)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| corrupt("history entry id"))?;
            out.push((offset, Bytes::from(frame)));
        }
        Ok(HistoryRead {
            epoch,
            top,
            entries: out,
            complete: complete == 1,
        })
    }

    async fn retract(&self, stream: &str, epoch: &str, offset: u64) -> StoreResult<()> {
        let [meta, entries, retracted] = self.history_keys(stream);
        let mut con = self.con.clone();
        self.history_retract
            .key(meta)
            .key(retracted)
            .key(entries)
            .arg(epoch)
            .arg(offset)
            .invoke_async::<i64>(&mut con)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        crate::SessionStore::ping(self).await
    }
}
