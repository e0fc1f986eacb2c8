//! [`ChatStore`] over SQL, on SQLite or PostgreSQL through sqlx's `Any` driver:
//! one set of statements (numbered parameters, written `$N` and given to SQLite
//! as `?N`), one schema per engine, embedded and applied when the store opens.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::blobs::BlobStore;
use crate::{
    Canned, ChatStore, Conversation, ConversationKind, Id, Message, Millis, NewAgent, NewMessage,
    Page, Peer, Purged, ReadState, Role, Shop, StoreError, Summary, Upload, User, VisitorQuery,
};

/// The two engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

/// The migrations, in order: (version, statements). They are written for
/// SQLite and given to PostgreSQL with its own form of a generated key (the
/// only difference the schema needs).
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_sessions.sql")),
    (3, include_str!("../migrations/0003_uploads.sql")),
];

fn migration_for(engine: Engine, statements: &str) -> Cow<'_, str> {
    match engine {
        Engine::Sqlite => Cow::Borrowed(statements),
        Engine::Postgres => Cow::Owned(statements.replace(
            "id INTEGER PRIMARY KEY AUTOINCREMENT",
            "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        )),
    }
}

/// The chat store on a SQL database.
#[derive(Clone)]
pub struct SqlStore {
    /// Reads (and PostgreSQL's writes).
    pool: AnyPool,
    /// Writes: on SQLite, which takes one writer at a time, a pool of one
    /// connection, so writers queue here in order instead of retrying on
    /// "database is locked" with sleeps; on PostgreSQL, `pool` itself.
    writer: AnyPool,
    engine: Engine,
    /// Sends (and SQLite's last-seen times) go to one task that stores those
    /// waiting together ([`append_batches`]); taken at close.
    appender: Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Append>>>>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// The statement for `engine`: SQLite is given `?N` for `$N`.
fn sql_for(engine: Engine, s: &str) -> Cow<'_, str> {
    match engine {
        Engine::Postgres => Cow::Borrowed(s),
        Engine::Sqlite => Cow::Owned(s.replace('$', "?")),
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e)
}

/// Maps a unique violation to [`StoreError::Conflict`] naming `what`.
fn conflict(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(what),
        _ => StoreError::Unavailable(e),
    }
}

/// SQLite's "database is locked" or "busy".
fn is_locked(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("5") | Some("6")),
        _ => false,
    }
}

fn corrupt(e: sqlx::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

const USER_COLUMNS: &str =
    "id, shop_id, role, username, nickname, ip, created_at, last_seen_at, sessions_after";
const CONVERSATION_COLUMNS: &str = "c.id, c.shop_id, c.kind, c.visitor_id, c.user_a, c.user_b, \
     c.assignee_id, c.last_message_id, c.created_at, c.updated_at";
const MESSAGE_COLUMNS: &str = "conversation_id, id, sender_id, kind, body, client_id, created_at";
/// A user's last-seen time moved forward (`$1` the user, `$2` the time).
const TOUCH: &str = "UPDATE chat_users SET last_seen_at = $2 WHERE id = $1 AND last_seen_at < $2";

/// The unread count of user `$2` in conversation `$1`: the messages after its
/// read position (0 without one) that it did not send.
const UNREAD: &str = "(SELECT COUNT(*) FROM chat_messages m \
     WHERE m.conversation_id = $1 AND m.sender_id <> $2 AND m.id > COALESCE(\
         (SELECT r.position FROM chat_reads r \
          WHERE r.conversation_id = $1 AND r.user_id = $2), 0))";

fn shop_from(r: &AnyRow) -> Result<Shop, StoreError> {
    Ok(Shop {
        id: r.try_get("id").map_err(corrupt)?,
        name: r.try_get("name").map_err(corrupt)?,
        created_at: r.try_get("created_at").map_err(corrupt)?,
    })
}

fn user_from(r: &AnyRow) -> Result<User, StoreError> {
    Ok(User {
        id: r.try_get("id").map_err(corrupt)?,
        shop_id: r.try_get("shop_id").map_err(corrupt)?,
        role: Role::parse(&r.try_get::<String, _>("role").map_err(corrupt)?)?,
        username: r.try_get("username").map_err(corrupt)?,
        nickname: r.try_get("nickname").map_err(corrupt)?,
        ip: r.try_get("ip").map_err(corrupt)?,
        created_at: r.try_get("created_at").map_err(corrupt)?,
        last_seen_at: r.try_get("last_seen_at").map_err(corrupt)?,
        sessions_after: r.try_get("sessions_after").map_err(corrupt)?,
    })
}

/// The `p_` columns of a listed conversation's other side, if it has one.
fn peer_from(r: &AnyRow) -> Result<Option<Peer>, StoreError> {
    let Some(id) = r.try_get::<Option<Id>, _>("p_id").map_err(corrupt)? else {
        return Ok(None);
    };
    Ok(Some(Peer {
        id,
        role: Role::parse(&r.try_get::<String, _>("p_role").map_err(corrupt)?)?,
        nickname: r.try_get("p_nickname").map_err(corrupt)?,
        ip: r.try_get("p_ip").map_err(corrupt)?,
        last_seen_at: r.try_get("p_last_seen_at").map_err(corrupt)?,
    }))
}

fn conversation_from(r: &AnyRow) -> Result<Conversation, StoreError> {
    let a: Option<Id> = r.try_get("user_a").map_err(corrupt)?;
    let b: Option<Id> = r.try_get("user_b").map_err(corrupt)?;
    Ok(Conversation {
        id: r.try_get("id").map_err(corrupt)?,
        shop_id: r.try_get("shop_id").map_err(corrupt)?,
        kind: ConversationKind::parse(&r.try_get::<String, _>("kind").map_err(corrupt)?)?,
        visitor_id: r.try_get("visitor_id").map_err(corrupt)?,
        pair: a.zip(b),
        assignee_id: r.try_get("assignee_id").map_err(corrupt)?,
        last_message_id: r.try_get("last_message_id").map_err(corrupt)?,
        created_at: r.try_get("created_at").map_err(corrupt)?,
        updated_at: r.try_get("updated_at").map_err(corrupt)?,
    })
}

/// A message from columns named with `prefix` (`""`, or `"m_"` in a join).
fn message_from(r: &AnyRow, prefix: &str) -> Result<Message, StoreError> {
    let col = |c: &str| format!("{prefix}{c}");
    Ok(Message {
        conversation_id: r
            .try_get(col("conversation_id").as_str())
            .map_err(corrupt)?,
        id: r.try_get(col("id").as_str()).map_err(corrupt)?,
        sender_id: r.try_get(col("sender_id").as_str()).map_err(corrupt)?,
        kind: r.try_get(col("kind").as_str()).map_err(corrupt)?,
        body: r.try_get(col("body").as_str()).map_err(corrupt)?,
        client_id: r.try_get(col("client_id").as_str()).map_err(corrupt)?,
        created_at: r.try_get(col("created_at").as_str()).map_err(corrupt)?,
    })
}

/// `%text%` for LIKE with `\` escaping the wildcards in `text`, lower-cased.
fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl SqlStore {
    /// Opens the database at `url` (`sqlite://PATH?mode=rwc`, or
    /// `postgres://USER@HOST:PORT/DB`), with at most `max_connections`, and
    /// applies the migrations it has not seen.
    pub async fn open(url: &str, max_connections: u32) -> Result<SqlStore, StoreError> {
        SqlStore::open_with(url, max_connections, Duration::from_secs(5)).await
    }

    /// [`SqlStore::open`], waiting at most `timeout` for a connection (at
    /// opening and for each call) before a call fails as unavailable.
    pub async fn open_with(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<SqlStore, StoreError> {
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Engine::Postgres
        } else {
            return Err(StoreError::Invalid(
                "the chat database URL must start with sqlite: or postgres:",
            ));
        };
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(timeout)
            // A connection to a local file is not tested before each use (a
            // round trip to its thread; sqlx still tests it when it is given
            // back, off the caller's path); PostgreSQL's are.
            .test_before_acquire(engine == Engine::Postgres)
            .connect(url)
            .await
            .map_err(unavailable)?;
        let mut store = SqlStore {
            writer: pool.clone(),
            pool,
            engine,
            appender: Default::default(),
        };
        // Processes opening one new SQLite file at once can find it locked while
        // another switches its journal or migrates it: they wait their turn.
        let mut tries = 0;
        loop {
            match store.prepare().await {
                Err(StoreError::Unavailable(e))
                    if engine == Engine::Sqlite && is_locked(&e) && tries < 100 =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
                Ok(()) => break,
            }
        }
        if engine == Engine::Sqlite {
            // Opened after the file is in WAL mode (the switch wants it alone).
            store.writer = AnyPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(timeout)
                .test_before_acquire(false)
                // The one writer keeps more of the file in memory than a
                // reader (32 MiB: the indexes its inserts go through), and
                // its statements' undo journals in memory, not in files.
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::query("PRAGMA cache_size = -32768")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA temp_store = MEMORY")
                            .execute(&mut *conn)
                            .await?;
                        Ok(())
                    })
                })
                .connect(url)
                .await
                .map_err(unavailable)?;
        }
        let (appender, waiting) = tokio::sync::mpsc::channel(4 * APPEND_BATCH);
        tokio::spawn(append_batches(store.writer.clone(), engine, waiting));
        store.appender = Arc::new(std::sync::Mutex::new(Some(appender)));
        Ok(store)
    }

    /// Puts a new SQLite file in WAL mode and applies the migrations.
    async fn prepare(&self) -> Result<(), StoreError> {
        let store = self;
        if store.engine == Engine::Sqlite {
            // Readers do not wait for the writer. The mode is kept in the file,
            // so only a new file is switched (the switch needs the file alone).
            let mode: String = sqlx::query("PRAGMA journal_mode")
                .fetch_one(&store.pool)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(unavailable)?;
            if !mode.eq_ignore_ascii_case("wal") {
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&store.pool)
                    .await
                    .map_err(unavailable)?;
            }
        }
        store.migrate().await
    }

    /// Opens (creating it if needed) the SQLite file at `path`.
    pub async fn sqlite(path: &Path, max_connections: u32) -> Result<SqlStore, StoreError> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        SqlStore::open(&url, max_connections).await
    }

    /// Whether this store is on PostgreSQL (else SQLite).
    pub fn is_postgres(&self) -> bool {
        self.engine == Engine::Postgres
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        // The appender ends once its last waiting sends are answered.
        self.appender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        self.pool.close().await;
        self.writer.close().await;
    }

    /// SQLite's appender, while the store is open.
    fn appender(&self) -> Option<tokio::sync::mpsc::Sender<Append>> {
        self.appender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One message in a transaction of its own (the store being closed).
    async fn append_alone(&self, m: &NewMessage) -> Result<(Message, bool), StoreError> {
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        let r = append_in(&mut tx, self.engine, m).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(r)
    }

    /// The statement for this engine: SQLite is given `?N` for `$N`.
    fn sql<'a>(&self, s: &'a str) -> Cow<'a, str> {
        sql_for(self.engine, s)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        if self.engine == Engine::Postgres {
            // Two logic processes starting together migrate one after the other.
            sqlx::query("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(7240523)) AS l")
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS chat_migrations \
             (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let done: Vec<i64> = sqlx::query("SELECT version FROM chat_migrations")
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|r| r.try_get::<i64, _>("version"))
            .collect::<Result<_, _>>()
            .map_err(corrupt)?;
        for (version, statements) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            sqlx::raw_sql(&migration_for(self.engine, statements))
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            sqlx::query(
                &self.sql("INSERT INTO chat_migrations (version, applied_at) VALUES ($1, $2)"),
            )
            .bind(*version)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn insert_agent(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        shop_id: Id,
        agent: &NewAgent<'_>,
        at: Millis,
    ) -> Result<User, StoreError> {
        let row = sqlx::query(&self.sql(&format!(
            "INSERT INTO chat_users (shop_id, role, username, nickname, password_hash, created_at, last_seen_at) \
             VALUES ($1, 'agent', $2, $3, $4, $5, $5) RETURNING {USER_COLUMNS}"
        )))
        .bind(shop_id)
        .bind(agent.username)
        .bind(agent.nickname)
        .bind(agent.password_hash)
        .bind(at)
        .fetch_one(&mut **tx)
        .await
        .map_err(conflict("user name"))?;
        user_from(&row)
    }

    async fn conversation_where(
        &self,
        clause: &str,
        binds: &[Id],
    ) -> Result<Option<Conversation>, StoreError> {
        let sql = format!("SELECT {CONVERSATION_COLUMNS} FROM chat_conversations c WHERE {clause}");
        let sql = self.sql(&sql);
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(*b);
        }
        q.fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(|r| conversation_from(&r))
            .transpose()
    }
}

/// The wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

#[async_trait]
impl ChatStore for SqlStore {
    async fn create_shop(
        &self,
        name: &str,
        agent: &NewAgent<'_>,
        at: Millis,
    ) -> Result<(Shop, User), StoreError> {
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        let row = sqlx::query(&self.sql(
            "INSERT INTO chat_shops (name, created_at) VALUES ($1, $2) RETURNING id, name, created_at",
        ))
        .bind(name)
        .bind(at)
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict("shop"))?;
        let shop = shop_from(&row)?;
        let user = self.insert_agent(&mut tx, shop.id, agent, at).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok((shop, user))
    }

    async fn shop(&self, id: Id) -> Result<Option<Shop>, StoreError> {
        let sql = self.sql("SELECT id, name, created_at FROM chat_shops WHERE id = $1");
        sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(|r| shop_from(&r))
            .transpose()
    }

    async fn shop_by_name(&self, name: &str) -> Result<Option<Shop>, StoreError> {
        let sql = self.sql("SELECT id, name, created_at FROM chat_shops WHERE name = $1");
        sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(|r| shop_from(&r))
            .transpose()
    }

    async fn create_agent(
        &self,
        shop_id: Id,
        agent: &NewAgent<'_>,
        at: Millis,
    ) -> Result<User, StoreError> {
        if self.shop(shop_id).await?.is_none() {
            return Err(StoreError::NotFound("shop"));
        }
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        let user = self.insert_agent(&mut tx, shop_id, agent, at).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(user)
    }

    async fn agent_login(&self, username: &str) -> Result<Option<(User, String)>, StoreError> {
        let row = sqlx::query(&self.sql(&format!(
            "SELECT {USER_COLUMNS}, password_hash FROM chat_users \
             WHERE username = $1 AND role = 'agent'"
        )))
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.map(|r| {
            let hash: Option<String> = r.try_get("password_hash").map_err(corrupt)?;
            let hash =
                hash.ok_or_else(|| StoreError::Corrupt("an agent without a password".into()))?;
            Ok((user_from(&r)?, hash))
        })
        .transpose()
    }

    async fn set_password(&self, user_id: Id, password_hash: &str) -> Result<(), StoreError> {
        let done = sqlx::query(
            &self.sql("UPDATE chat_users SET password_hash = $2 WHERE id = $1 AND role = 'agent'"),
        )
        .bind(user_id)
        .bind(password_hash)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("agent"));
        }
        Ok(())
    }

    async fn agents(&self, shop_id: Id) -> Result<Vec<User>, StoreError> {
        sqlx::query(&self.sql(&format!(
            "SELECT {USER_COLUMNS} FROM chat_users WHERE shop_id = $1 AND role = 'agent' ORDER BY id"
        )))
        .bind(shop_id)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(user_from)
        .collect()
    }

    async fn create_visitor(
        &self,
        shop_id: Id,
        nickname: &str,
        ip: Option<&str>,
        at: Millis,
    ) -> Result<User, StoreError> {
        let row = sqlx::query(&self.sql(&format!(
            "INSERT INTO chat_users (shop_id, role, nickname, ip, created_at, last_seen_at) \
             SELECT id, 'visitor', $2, $3, $4, $4 FROM chat_shops WHERE id = $1 \
             RETURNING {USER_COLUMNS}"
        )))
        .bind(shop_id)
        .bind(nickname)
        .bind(ip)
        .bind(at)
        .fetch_optional(&self.writer)
        .await
        .map_err(unavailable)?;
        match row {
            Some(r) => user_from(&r),
            None => Err(StoreError::NotFound("shop")),
        }
    }

    async fn user(&self, id: Id) -> Result<Option<User>, StoreError> {
        sqlx::query(&self.sql(&format!(
            "SELECT {USER_COLUMNS} FROM chat_users WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .map(|r| user_from(&r))
        .transpose()
    }

    async fn touch(&self, user_id: Id, at: Millis) -> Result<(), StoreError> {
        // (PostgreSQL's go on their own: a batch locking many users' rows could
        // deadlock with another logic's.)
        if let Some(appender) = self.appender().filter(|_| self.engine == Engine::Sqlite) {
            // With the sends waiting: no commit of its own.
            let answered = hand_over(&appender, |answer| Append::Seen(user_id, at, answer)).await;
            return outcome(answered).await;
        }
        sqlx::query(&self.sql(TOUCH))
            .bind(user_id)
            .bind(at)
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn visitors(&self, shop_id: Id, q: &VisitorQuery) -> Result<Vec<User>, StoreError> {
        let pattern = q.search.as_deref().map(contains_pattern);
        sqlx::query(&self.sql(&format!(
            "SELECT {USER_COLUMNS} FROM chat_users \
             WHERE shop_id = $1 AND role = 'visitor' \
             AND ($2 IS NULL OR last_seen_at >= $2) \
             AND ($3 IS NULL OR LOWER(nickname) LIKE $3 ESCAPE '\\' \
                  OR LOWER(COALESCE(ip, '')) LIKE $3 ESCAPE '\\') \
             ORDER BY last_seen_at DESC, id DESC LIMIT $4 OFFSET $5"
        )))
        .bind(shop_id)
        .bind(q.seen_since)
        .bind(pattern)
        .bind(i64::from(q.limit))
        .bind(i64::from(q.offset))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(user_from)
        .collect()
    }

    async fn kefu_conversation(
        &self,
        visitor: &User,
        at: Millis,
    ) -> Result<Conversation, StoreError> {
        if visitor.role != Role::Visitor {
            return Err(StoreError::Invalid(
                "only a visitor has a kefu conversation",
            ));
        }
        // Read first: the insert below would take a key from PostgreSQL's
        // sequence on every call, made or not.
        if let Some(c) = self
            .conversation_where("c.visitor_id = $1", &[visitor.id])
            .await?
        {
            return Ok(c);
        }
        sqlx::query(&self.sql(
            "INSERT INTO chat_conversations (shop_id, kind, visitor_id, created_at, updated_at) \
             SELECT shop_id, 'kefu', id, $2, $2 FROM chat_users WHERE id = $1 AND role = 'visitor' \
             ON CONFLICT (visitor_id) DO NOTHING",
        ))
        .bind(visitor.id)
        .bind(at)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        self.conversation_where("c.visitor_id = $1", &[visitor.id])
            .await?
            .ok_or(StoreError::NotFound("visitor"))
    }

    async fn direct_conversation(
        &self,
        a: &User,
        b: &User,
        at: Millis,
    ) -> Result<Conversation, StoreError> {
        if a.shop_id != b.shop_id {
            return Err(StoreError::Invalid("both users must belong to one shop"));
        }
        if a.id == b.id {
            return Err(StoreError::Invalid("a conversation needs two users"));
        }
        let (lo, hi) = if a.id < b.id {
            (a.id, b.id)
        } else {
            (b.id, a.id)
        };
        sqlx::query(&self.sql(
            "INSERT INTO chat_conversations (shop_id, kind, user_a, user_b, created_at, updated_at) \
             SELECT $1, 'direct', $2, $3, $4, $4 \
             WHERE (SELECT COUNT(*) FROM chat_users WHERE id IN ($2, $3) AND shop_id = $1) = 2 \
             ON CONFLICT (user_a, user_b) DO NOTHING",
        ))
        .bind(a.shop_id)
        .bind(lo)
        .bind(hi)
        .bind(at)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        self.conversation_where("c.user_a = $1 AND c.user_b = $2", &[lo, hi])
            .await?
            .ok_or(StoreError::NotFound("user"))
    }

    async fn conversation(&self, id: Id) -> Result<Option<Conversation>, StoreError> {
        self.conversation_where("c.id = $1", &[id]).await
    }

    async fn assign(&self, conversation_id: Id, agent_id: Option<Id>) -> Result<(), StoreError> {
        let done = sqlx::query(&self.sql(
            "UPDATE chat_conversations SET assignee_id = $2 \
             WHERE id = $1 AND kind = 'kefu' AND ($2 IS NULL OR EXISTS (\
                 SELECT 1 FROM chat_users u WHERE u.id = $2 AND u.role = 'agent' \
                 AND u.shop_id = chat_conversations.shop_id))",
        ))
        .bind(conversation_id)
        .bind(agent_id)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(
                "kefu conversation or agent of its shop",
            ));
        }
        Ok(())
    }

    async fn append_all(&self, ms: &[NewMessage]) -> Appended {
        let mut out = Vec::with_capacity(ms.len());
        if let Some(appender) = self.appender() {
            // Handed over together (in parts of APPEND_PART, one after the
            // other), then waited for: stored in that order, each part in one
            // transaction with whatever else is waiting.
            let mut answers = Vec::new();
            for part in ms.chunks(APPEND_PART) {
                let (n, part) = (part.len(), part.to_vec());
                answers.push((
                    n,
                    hand_over(&appender, |answer| Append::Messages(part, answer)).await,
                ));
            }
            for (n, answered) in answers {
                match outcome(answered).await {
                    Ok(each) => out.extend(each),
                    Err(e) => {
                        let why = e.to_string();
                        out.extend((0..n).map(|_| {
                            Err(StoreError::Unavailable(sqlx::Error::Protocol(why.clone())))
                        }));
                    }
                }
            }
            return out;
        }
        for m in ms {
            out.push(self.append_alone(m).await);
        }
        out
    }

    async fn messages(&self, conversation_id: Id, page: Page) -> Result<Vec<Message>, StoreError> {
        let (clause, order, bound, limit) = match page {
            Page::Newest { limit } => ("id <= $2", "DESC", Id::MAX, limit),
            Page::Before { id, limit } => ("id < $2", "DESC", id, limit),
            Page::After { id, limit } => ("id > $2", "ASC", id, limit),
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat_messages WHERE conversation_id = $1 AND {clause} \
             ORDER BY id {order} LIMIT $3"
        );
        let sql = self.sql(&sql);
        let q = sqlx::query(&sql)
            .bind(conversation_id)
            .bind(bound)
            .bind(i64::from(limit));
        let mut out: Vec<Message> = q
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|r| message_from(r, ""))
            .collect::<Result<_, _>>()?;
        if order == "DESC" {
            out.reverse();
        }
        Ok(out)
    }

    async fn mark_read(
        &self,
        conversation_id: Id,
        user_id: Id,
        position: Id,
    ) -> Result<Id, StoreError> {
        let row = sqlx::query(&self.sql(
            "INSERT INTO chat_reads (conversation_id, user_id, position) \
             SELECT id, $2, CASE WHEN $3 < last_message_id THEN $3 ELSE last_message_id END \
             FROM chat_conversations WHERE id = $1 \
             ON CONFLICT (conversation_id, user_id) DO UPDATE SET position = \
             CASE WHEN excluded.position > chat_reads.position \
                  THEN excluded.position ELSE chat_reads.position END \
             RETURNING position",
        ))
        .bind(conversation_id)
        .bind(user_id)
        .bind(position.max(0))
        .fetch_optional(&self.writer)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                StoreError::NotFound("user")
            }
            _ => StoreError::Unavailable(e),
        })?;
        match row {
            Some(r) => r.try_get("position").map_err(corrupt),
            None => Err(StoreError::NotFound("conversation")),
        }
    }

    async fn read_state(
        &self,
        conversation_id: Id,
        user_id: Id,
    ) -> Result<Option<ReadState>, StoreError> {
        // A row per stored position (one with no reader when there is none),
        // each with the conversation's newest id and the reader's unread count.
        let rows = sqlx::query(&self.sql(&format!(
            "SELECT c.last_message_id AS last, r.user_id AS user_id, r.position AS position, \
             {UNREAD} AS unread \
             FROM chat_conversations c LEFT JOIN chat_reads r ON r.conversation_id = c.id \
             WHERE c.id = $1 ORDER BY r.user_id"
        )))
        .bind(conversation_id)
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut positions = Vec::with_capacity(rows.len());
        for r in &rows {
            let user: Option<Id> = r.try_get("user_id").map_err(corrupt)?;
            if let Some(user) = user {
                positions.push((user, r.try_get("position").map_err(corrupt)?));
            }
        }
        Ok(Some(ReadState {
            last_message_id: first.try_get("last").map_err(corrupt)?,
            positions,
            unread: first.try_get("unread").map_err(corrupt)?,
        }))
    }

    async fn unread(&self, conversation_id: Id, user_id: Id) -> Result<i64, StoreError> {
        let row = sqlx::query(&self.sql(&format!("SELECT {UNREAD} AS unread")))
            .bind(conversation_id)
            .bind(user_id)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        row.try_get("unread").map_err(corrupt)
    }

    async fn summaries(
        &self,
        user: &User,
        offset: u32,
        limit: u32,
    ) -> Result<Vec<Summary>, StoreError> {
        let sql = format!(
            "SELECT {CONVERSATION_COLUMNS}, \
                m.conversation_id AS m_conversation_id, m.id AS m_id, m.sender_id AS m_sender_id, \
                m.kind AS m_kind, m.body AS m_body, m.client_id AS m_client_id, \
                m.created_at AS m_created_at, \
                (SELECT COUNT(*) FROM chat_messages u \
                 WHERE u.conversation_id = c.id AND u.sender_id <> $3 AND u.id > COALESCE(\
                    (SELECT r.position FROM chat_reads r \
                     WHERE r.conversation_id = c.id AND r.user_id = $3), 0)) AS unread, \
                p.id AS p_id, p.role AS p_role, p.nickname AS p_nickname, p.ip AS p_ip, \
                p.last_seen_at AS p_last_seen_at \
             FROM chat_conversations c \
             LEFT JOIN chat_messages m ON m.conversation_id = c.id AND m.id = c.last_message_id \
             LEFT JOIN chat_users p ON p.id = (CASE \
                WHEN c.kind = 'kefu' AND $2 = 'agent' THEN c.visitor_id \
                WHEN c.kind = 'direct' AND c.user_a = $3 THEN c.user_b \
                WHEN c.kind = 'direct' THEN c.user_a END) \
             WHERE c.shop_id = $1 AND ( \
                (c.kind = 'kefu' AND ($2 = 'agent' OR c.visitor_id = $3)) \
                OR (c.kind = 'direct' AND (c.user_a = $3 OR c.user_b = $3))) \
             ORDER BY c.updated_at DESC, c.id DESC LIMIT $4 OFFSET $5"
        );
        sqlx::query(&self.sql(&sql))
            .bind(user.shop_id)
            .bind(user.role.as_str())
            .bind(user.id)
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|r| {
                let has_last: Option<Id> = r.try_get("m_id").map_err(corrupt)?;
                Ok(Summary {
                    conversation: conversation_from(r)?,
                    last: match has_last {
                        Some(_) => Some(message_from(r, "m_")?),
                        None => None,
                    },
                    unread: r.try_get("unread").map_err(corrupt)?,
                    peer: peer_from(r)?,
                })
            })
            .collect()
    }

    async fn blacklist_add(&self, shop_id: Id, ip: &str, at: Millis) -> Result<(), StoreError> {
        sqlx::query(&self.sql(
            "INSERT INTO chat_blacklist (shop_id, ip, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (shop_id, ip) DO NOTHING",
        ))
        .bind(shop_id)
        .bind(ip)
        .bind(at)
        .execute(&self.writer)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                StoreError::NotFound("shop")
            }
            _ => StoreError::Unavailable(e),
        })?;
        Ok(())
    }

    async fn blacklist_remove(&self, shop_id: Id, ip: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query(&self.sql("DELETE FROM chat_blacklist WHERE shop_id = $1 AND ip = $2"))
                .bind(shop_id)
                .bind(ip)
                .execute(&self.writer)
                .await
                .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn blacklist(&self, shop_id: Id) -> Result<Vec<String>, StoreError> {
        sqlx::query(&self.sql("SELECT ip FROM chat_blacklist WHERE shop_id = $1 ORDER BY ip"))
            .bind(shop_id)
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|r| r.try_get("ip").map_err(corrupt))
            .collect()
    }

    async fn is_blacklisted(&self, shop_id: Id, ip: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            &self.sql("SELECT COUNT(*) AS n FROM chat_blacklist WHERE shop_id = $1 AND ip = $2"),
        )
        .bind(shop_id)
        .bind(ip)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(row.try_get::<i64, _>("n").map_err(corrupt)? > 0)
    }

    async fn canned_add(
        &self,
        shop_id: Id,
        title: &str,
        body: &str,
        at: Millis,
    ) -> Result<Canned, StoreError> {
        let row = sqlx::query(&self.sql(
            "INSERT INTO chat_canned (shop_id, title, body, created_at) \
             SELECT id, $2, $3, $4 FROM chat_shops WHERE id = $1 \
             RETURNING id, shop_id, title, body, created_at",
        ))
        .bind(shop_id)
        .bind(title)
        .bind(body)
        .bind(at)
        .fetch_optional(&self.writer)
        .await
        .map_err(unavailable)?
        .ok_or(StoreError::NotFound("shop"))?;
        canned_from(&row)
    }

    async fn canned(&self, shop_id: Id) -> Result<Vec<Canned>, StoreError> {
        sqlx::query(&self.sql(
            "SELECT id, shop_id, title, body, created_at FROM chat_canned \
             WHERE shop_id = $1 ORDER BY id",
        ))
        .bind(shop_id)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?
        .iter()
        .map(canned_from)
        .collect()
    }

    async fn canned_remove(&self, shop_id: Id, id: Id) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.sql("DELETE FROM chat_canned WHERE shop_id = $1 AND id = $2"))
            .bind(shop_id)
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }

    async fn add_upload(&self, u: &Upload) -> Result<(), StoreError> {
        sqlx::query(&self.sql(
            "INSERT INTO chat_uploads (id, conversation_id, uploader_id, content_type, size, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        ))
        .bind(u.id.as_str())
        .bind(u.conversation_id)
        .bind(u.uploader_id)
        .bind(u.content_type.as_str())
        .bind(u.size)
        .bind(u.created_at)
        .execute(&self.writer)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_foreign_key_violation() => {
                StoreError::NotFound("conversation")
            }
            _ => conflict("upload")(e),
        })?;
        Ok(())
    }

    async fn upload(&self, id: &str) -> Result<Option<Upload>, StoreError> {
        sqlx::query(&self.sql(
            "SELECT id, conversation_id, uploader_id, content_type, size, created_at \
             FROM chat_uploads WHERE id = $1",
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .map(|r| {
            Ok(Upload {
                id: r.try_get("id").map_err(corrupt)?,
                conversation_id: r.try_get("conversation_id").map_err(corrupt)?,
                uploader_id: r.try_get("uploader_id").map_err(corrupt)?,
                content_type: r.try_get("content_type").map_err(corrupt)?,
                size: r.try_get("size").map_err(corrupt)?,
                created_at: r.try_get("created_at").map_err(corrupt)?,
            })
        })
        .transpose()
    }

    async fn revoke(&self, jti: &str, expires_at: i64) -> Result<(), StoreError> {
        sqlx::query(&self.sql(
            "INSERT INTO chat_revoked (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        ))
        .bind(jti)
        .bind(expires_at)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn session_user(
        &self,
        user_id: Id,
        jti: &str,
        ip: Option<&str>,
    ) -> Result<Option<(User, bool, bool)>, StoreError> {
        let row = sqlx::query(&self.sql(&format!(
            "SELECT {USER_COLUMNS}, \
             (SELECT COUNT(*) FROM chat_revoked r WHERE r.jti = $2) AS revoked, \
             (SELECT COUNT(*) FROM chat_blacklist b \
              WHERE b.shop_id = chat_users.shop_id AND b.ip = $3) AS blocked \
             FROM chat_users WHERE id = $1"
        )))
        .bind(user_id)
        .bind(jti)
        .bind(ip)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        let Some(r) = row else {
            return Ok(None);
        };
        let count = |name: &str| r.try_get::<i64, _>(name).map_err(corrupt);
        Ok(Some((
            user_from(&r)?,
            count("revoked")? > 0,
            count("blocked")? > 0,
        )))
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(&self.sql("SELECT COUNT(*) AS n FROM chat_revoked WHERE jti = $1"))
            .bind(jti)
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(row.try_get::<i64, _>("n").map_err(corrupt)? > 0)
    }

    async fn end_sessions(&self, user_id: Id, before: i64) -> Result<(), StoreError> {
        let done = sqlx::query(&self.sql(
            "UPDATE chat_users SET sessions_after = $2 WHERE id = $1 AND sessions_after < $2",
        ))
        .bind(user_id)
        .bind(before)
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        if done.rows_affected() == 0 && self.user(user_id).await?.is_none() {
            return Err(StoreError::NotFound("user"));
        }
        Ok(())
    }

    async fn purge(&self, before: Millis) -> Result<Purged, StoreError> {
        let mut tx = self.writer.begin().await.map_err(unavailable)?;
        // The conversations about to go (`c`, its visitor `v`).
        const GOING: &str = "(c.kind = 'kefu' AND v.last_seen_at < $1) \
                OR (c.kind = 'direct' AND c.updated_at < $1) \
                OR (c.kind = 'direct' AND EXISTS (SELECT 1 FROM chat_users p \
                    WHERE p.id IN (c.user_a, c.user_b) AND p.role = 'visitor' \
                    AND p.last_seen_at < $1))";
        if self.engine == Engine::Postgres {
            // Locked first, in id order, as the appender's batches lock theirs:
            // the deletes below then take no conversation's lock out of order.
            sqlx::query(&format!(
                "SELECT c.id FROM chat_conversations c \
                 LEFT JOIN chat_users v ON v.id = c.visitor_id WHERE {GOING} \
                 ORDER BY c.id FOR UPDATE OF c"
            ))
            .bind(before)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        // The uploads of the conversations about to go (their rows go with
        // them; their bytes in chat_blobs here, elsewhere by the caller).
        let doomed = format!(
            "SELECT u.id FROM chat_uploads u \
             JOIN chat_conversations c ON c.id = u.conversation_id \
             LEFT JOIN chat_users v ON v.id = c.visitor_id WHERE {GOING}"
        );
        let uploads: Vec<String> = sqlx::query(&self.sql(&doomed))
            .bind(before)
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|r| r.try_get("id").map_err(corrupt))
            .collect::<Result<_, _>>()?;
        sqlx::query(&self.sql(&format!("DELETE FROM chat_blobs WHERE id IN ({doomed})")))
            .bind(before)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let visitors = sqlx::query(
            &self.sql("DELETE FROM chat_users WHERE role = 'visitor' AND last_seen_at < $1"),
        )
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        let conversations = sqlx::query(
            &self.sql("DELETE FROM chat_conversations WHERE kind = 'direct' AND updated_at < $1"),
        )
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?
        .rows_affected();
        // Revocations of tokens that have expired anyway (seconds).
        sqlx::query(&self.sql("DELETE FROM chat_revoked WHERE expires_at < $1"))
            .bind(before / 1000)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Purged {
            visitors,
            conversations,
            uploads,
        })
    }
}

fn canned_from(r: &AnyRow) -> Result<Canned, StoreError> {
    Ok(Canned {
        id: r.try_get("id").map_err(corrupt)?,
        shop_id: r.try_get("shop_id").map_err(corrupt)?,
        title: r.try_get("title").map_err(corrupt)?,
        body: r.try_get("body").map_err(corrupt)?,
        created_at: r.try_get("created_at").map_err(corrupt)?,
    })
}

/// Blobs in the chat's own database (`chat_blobs`): what a cluster uses, so
/// logic hosts need no shared disk.
#[async_trait]
impl BlobStore for SqlStore {
    async fn put(&self, id: &str, data: &[u8]) -> Result<(), StoreError> {
        sqlx::query(&self.sql("INSERT INTO chat_blobs (id, data) VALUES ($1, $2)"))
            .bind(id)
            .bind(data.to_vec())
            .execute(&self.writer)
            .await
            .map_err(conflict("blob"))?;
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query(&self.sql("SELECT data FROM chat_blobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .map(|r| r.try_get("data").map_err(corrupt))
            .transpose()
    }

    async fn remove(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(&self.sql("DELETE FROM chat_blobs WHERE id = $1"))
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// Stores one message in an open transaction (see [`ChatStore::append`]).
async fn append_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    engine: Engine,
    m: &NewMessage,
) -> Result<(Message, bool), StoreError> {
    // A write first: it takes SQLite's write lock at once, and on PostgreSQL
    // the row lock orders concurrent sends to one conversation.
    let next: Option<Id> = sqlx::query(&sql_for(
        engine,
        "UPDATE chat_conversations SET last_message_id = last_message_id + 1, \
         updated_at = CASE WHEN updated_at > $2 THEN updated_at ELSE $2 END \
         WHERE id = $1 RETURNING last_message_id",
    ))
    .bind(m.conversation_id)
    .bind(m.at)
    .fetch_optional(&mut **tx)
    .await
    .map_err(unavailable)?
    .map(|r| r.try_get("last_message_id"))
    .transpose()
    .map_err(corrupt)?;
    let Some(next) = next else {
        return Err(StoreError::NotFound("conversation"));
    };
    // One statement for a new message: a retried client id inserts nothing
    // (and returns no row), and only then is the stored one read.
    let row = sqlx::query(&sql_for(
        engine,
        &format!(
            "INSERT INTO chat_messages ({MESSAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (conversation_id, sender_id, client_id) DO NOTHING \
             RETURNING {MESSAGE_COLUMNS}"
        ),
    ))
    .bind(m.conversation_id)
    .bind(next)
    .bind(m.sender_id)
    .bind(m.kind.as_str())
    .bind(m.body.as_str())
    .bind(m.client_id.as_deref())
    .bind(m.at)
    .fetch_optional(&mut **tx)
    .await
    .map_err(unavailable)?;
    if let Some(row) = row {
        return Ok((message_from(&row, "")?, true));
    }
    // This sender already sent this client id: undo the increment (in this
    // transaction, which may hold other messages too) and answer the stored one.
    let existing = sqlx::query(&sql_for(
        engine,
        &format!(
            "SELECT {MESSAGE_COLUMNS} FROM chat_messages \
             WHERE conversation_id = $1 AND sender_id = $2 AND client_id = $3"
        ),
    ))
    .bind(m.conversation_id)
    .bind(m.sender_id)
    .bind(m.client_id.as_deref())
    .fetch_one(&mut **tx)
    .await
    .map_err(unavailable)?;
    sqlx::query(&sql_for(
        engine,
        "UPDATE chat_conversations SET last_message_id = last_message_id - 1 WHERE id = $1",
    ))
    .bind(m.conversation_id)
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?;
    Ok((message_from(&existing, "")?, false))
}

/// The outcome of each message of a batch of sends, in order.
type Appended = Vec<Result<(Message, bool), StoreError>>;

/// A write waiting for the appender, and where its outcome goes.
enum Append {
    /// Sends, stored in this order and in the same transaction.
    Messages(
        Vec<NewMessage>,
        tokio::sync::oneshot::Sender<Result<Appended, StoreError>>,
    ),
    /// A user's last-seen time ([`ChatStore::touch`]).
    Seen(
        Id,
        Millis,
        tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    ),
}

/// Gives a write to the appender: where its outcome will come, or `None` when
/// the appender has ended (the store closed).
async fn hand_over<T>(
    appender: &tokio::sync::mpsc::Sender<Append>,
    write: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, StoreError>>) -> Append,
) -> Option<tokio::sync::oneshot::Receiver<Result<T, StoreError>>> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    appender.send(write(answer)).await.ok()?;
    Some(answered)
}

/// A write's outcome from the appender; unavailable when it ended first.
async fn outcome<T>(
    answered: Option<tokio::sync::oneshot::Receiver<Result<T, StoreError>>>,
) -> Result<T, StoreError> {
    match answered {
        Some(answered) => answered
            .await
            .unwrap_or(Err(StoreError::Unavailable(sqlx::Error::PoolClosed))),
        None => Err(StoreError::Unavailable(sqlx::Error::PoolClosed)),
    }
}

impl Append {
    /// The messages it holds.
    fn messages(&self) -> usize {
        match self {
            Append::Messages(ms, _) => ms.len(),
            Append::Seen(..) => 0,
        }
    }
}

/// Most writes one appender transaction takes on (it may go over by one
/// [`Append::Messages`], of at most [`APPEND_PART`] messages).
const APPEND_BATCH: usize = 1024;

/// Most messages handed to the appender as one write.
const APPEND_PART: usize = 64;

/// The appender: stores the sends (and SQLite's last-seen times) waiting for it in
/// one transaction (one commit, one sync of the log for all of them), then the
/// next waiting ones, until every sender is gone (the store dropped or closed).
/// A failed transaction fails every write in it: none is stored.
async fn append_batches(
    writer: AnyPool,
    engine: Engine,
    mut waiting: tokio::sync::mpsc::Receiver<Append>,
) {
    let mut batch = Vec::with_capacity(APPEND_BATCH);
    while let Some(first) = waiting.recv().await {
        // What is waiting, up to APPEND_BATCH writes (messages, or last-seen
        // times).
        let mut writes = first.messages().max(1);
        batch.push(first);
        while writes < APPEND_BATCH {
            let Ok(w) = waiting.try_recv() else { break };
            writes += w.messages().max(1);
            batch.push(w);
        }
        let mut messages = Vec::with_capacity(writes);
        let mut seen: Vec<(Id, Millis)> = Vec::new();
        for w in &batch {
            match w {
                Append::Messages(ms, _) => messages.extend(ms),
                Append::Seen(user, at, _) => seen.push((*user, *at)),
            }
        }
        let outcome = append_batch(&writer, engine, &messages, &seen).await;
        let mut stored = match outcome {
            Ok(stored) => Ok(stored.into_iter()),
            Err(e) => Err(e.to_string()),
        };
        for w in batch.drain(..) {
            let failed = |why: &String| StoreError::Unavailable(sqlx::Error::Protocol(why.clone()));
            match (w, &mut stored) {
                (Append::Messages(ms, answer), Ok(stored)) => {
                    let each = (0..ms.len())
                        .map(|_| {
                            stored.next().unwrap_or(Err(StoreError::Corrupt(
                                "a send without an outcome".into(),
                            )))
                        })
                        .collect();
                    let _ = answer.send(Ok(each));
                }
                (Append::Seen(.., answer), Ok(_)) => {
                    let _ = answer.send(Ok(()));
                }
                (Append::Messages(_, answer), Err(why)) => {
                    let _ = answer.send(Err(failed(why)));
                }
                (Append::Seen(.., answer), Err(why)) => {
                    let _ = answer.send(Err(failed(why)));
                }
            }
        }
    }
}

/// Stores `messages` and `seen` times in one transaction: in one call to the
/// database when every message is new ([`append_together`]), else (a retried
/// client id among them) one message at a time. The outcome of each message,
/// in order.
async fn append_batch(
    writer: &AnyPool,
    engine: Engine,
    messages: &[&NewMessage],
    seen: &[(Id, Millis)],
) -> Result<Appended, StoreError> {
    // PostgreSQL may end a transaction to break a deadlock (with a writer that
    // locks conversations in another order) or a serialization failure: the
    // batch is tried again, twice at most, before its sends fail.
    let mut tries = 0;
    loop {
        match append_batch_once(writer, engine, messages, seen).await {
            Err(StoreError::Unavailable(e)) if tries < 2 && is_retryable(&e) => tries += 1,
            outcome => return outcome,
        }
    }
}

/// PostgreSQL's deadlock (40P01) and serialization failure (40001).
fn is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => matches!(d.code().as_deref(), Some("40P01") | Some("40001")),
        _ => false,
    }
}

/// [`append_batch`], once.
async fn append_batch_once(
    writer: &AnyPool,
    engine: Engine,
    messages: &[&NewMessage],
    seen: &[(Id, Millis)],
) -> Result<Appended, StoreError> {
    if let Some(stored) = append_together(writer, engine, messages, seen).await? {
        return Ok(stored);
    }
    let mut tx = writer.begin().await.map_err(unavailable)?;
    if engine == Engine::Postgres {
        let mut ids: Vec<Id> = messages.iter().map(|m| m.conversation_id).collect();
        ids.sort_unstable();
        ids.dedup();
        lock_conversations(&mut tx, &ids).await?;
    }
    for (user, at) in seen {
        sqlx::query(&sql_for(engine, TOUCH))
            .bind(*user)
            .bind(*at)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
    }
    let mut stored = Vec::with_capacity(messages.len());
    for m in messages {
        match append_in(&mut tx, engine, m).await {
            Err(StoreError::Unavailable(e)) => return Err(StoreError::Unavailable(e)),
            r => stored.push(r),
        }
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(stored)
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// `q` given last-seen times' parameters: `(user, time)` each.
fn bind_seen<'q>(mut q: Query<'q>, seen: &[(Id, Millis)]) -> Query<'q> {
    for (user, at) in seen {
        q = q.bind(*user).bind(*at);
    }
    q
}

/// `q` given messages' parameters: the columns of the batch's `VALUES`, with
/// each message's place among its conversation's in the batch.
fn bind_messages<'q>(mut q: Query<'q>, messages: &[&'q NewMessage], places: &[i64]) -> Query<'q> {
    for (m, place) in messages.iter().zip(places) {
        q = q
            .bind(m.conversation_id)
            .bind(*place)
            .bind(m.sender_id)
            .bind(m.kind.as_str())
            .bind(m.body.as_str())
            .bind(m.client_id.as_deref())
            .bind(m.at);
    }
    q
}

/// `q` given conversations' parameters: `(id, messages, latest time)` each.
fn bind_counts<'q>(mut q: Query<'q>, counts: &[(Id, i64, Millis)]) -> Query<'q> {
    for (id, n, at) in counts {
        q = q.bind(*id).bind(*n).bind(*at);
    }
    q
}

/// Locks conversations' rows in id order (PostgreSQL), so that two logics'
/// batches over some of the same conversations wait for each other instead of
/// deadlocking.
async fn lock_conversations(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    ids: &[Id],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT id FROM chat_conversations WHERE id IN ({}) ORDER BY id FOR NO KEY UPDATE",
        list(Engine::Postgres, ids.len())
    );
    // (As strong as the counter's update: foreign-key checks of read
    // positions and uploads into these conversations do not wait for it. Not
    // kept prepared: each batch size is a statement of its own.)
    let mut q = sqlx::query(&sql).persistent(false);
    for id in ids {
        q = q.bind(*id);
    }
    q.fetch_all(&mut **tx).await.map_err(unavailable)?;
    Ok(())
}

/// Stores every message of a batch and its last-seen times in one
/// transaction: the messages are inserted with ids counted from their
/// conversations' newest, then those counters move by the number of messages
/// each got. On SQLite the transaction is sent as one call (one wake-up of the
/// connection's thread, whatever the batch's size); on PostgreSQL it is five
/// statements, the conversations locked first in id order. `None` when a
/// message's client id was already stored: the unique index then fails the
/// whole transaction, which is rolled back (a message skipped would leave a
/// gap in the ids).
async fn append_together(
    writer: &AnyPool,
    engine: Engine,
    messages: &[&NewMessage],
    seen: &[(Id, Millis)],
) -> Result<Option<Appended>, StoreError> {
    // Each conversation once: (id, its messages in the batch, the latest time),
    // and each message's place among its conversation's (from 1).
    let mut counts: Vec<(Id, i64, Millis)> = Vec::new();
    let mut index = std::collections::HashMap::with_capacity(messages.len());
    let mut places = Vec::with_capacity(messages.len());
    for m in messages {
        let i = *index.entry(m.conversation_id).or_insert_with(|| {
            counts.push((m.conversation_id, 0, m.at));
            counts.len() - 1
        });
        let c = &mut counts[i];
        c.1 += 1;
        c.2 = c.2.max(m.at);
        places.push(c.1);
    }
    // Each user once, with its latest time (with two rows for one user, which
    // one `UPDATE … FROM` applies is not defined).
    let mut latest: Vec<(Id, Millis)> = Vec::with_capacity(seen.len());
    for &(user, at) in seen {
        match latest.iter_mut().find(|s| s.0 == user) {
            Some(s) => s.1 = s.1.max(at),
            None => latest.push((user, at)),
        }
    }
    let seen = latest;

    let seen_sql = (!seen.is_empty()).then(|| {
        format!(
            "UPDATE chat_users SET last_seen_at = b.column2 FROM (VALUES {}) AS b \
             WHERE chat_users.id = b.column1 AND chat_users.last_seen_at < b.column2",
            placeholders(engine, seen.len(), 2)
        )
    });
    let (insert_sql, update_sql) = if messages.is_empty() {
        (None, None)
    } else {
        (
            Some(format!(
                "INSERT {}INTO chat_messages ({MESSAGE_COLUMNS}) \
                 SELECT b.column1, c.last_message_id + b.column2, b.column3, b.column4, \
                 b.column5, b.column6, b.column7 FROM (VALUES {}) AS b \
                 JOIN chat_conversations c ON c.id = b.column1",
                // (PostgreSQL fails the transaction on any error.)
                if engine == Engine::Sqlite {
                    "OR ROLLBACK "
                } else {
                    ""
                },
                placeholders(engine, messages.len(), 7)
            )),
            Some(format!(
                "UPDATE chat_conversations SET last_message_id = last_message_id + b.column2, \
                 updated_at = CASE WHEN updated_at > b.column3 THEN updated_at ELSE b.column3 END \
                 FROM (VALUES {}) AS b WHERE chat_conversations.id = b.column1 \
                 RETURNING chat_conversations.id AS id, chat_conversations.last_message_id AS last",
                placeholders(engine, counts.len(), 3)
            )),
        )
    };
    let failed = |e: sqlx::Error| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => Ok(None),
        _ => Err(unavailable(e)),
    };

    let rows = if engine == Engine::Sqlite {
        let sql = ["BEGIN IMMEDIATE"]
            .into_iter()
            .chain(seen_sql.as_deref())
            .chain(insert_sql.as_deref())
            .chain(update_sql.as_deref())
            .chain(["COMMIT"])
            .collect::<Vec<_>>()
            .join("; ");
        // (Not kept prepared: each batch size is a statement of its own.)
        let q = sqlx::query(&sql).persistent(false);
        let q = bind_counts(
            bind_messages(bind_seen(q, &seen), messages, &places),
            &counts,
        );
        let mut conn = writer.acquire().await.map_err(unavailable)?;
        match q.fetch_all(&mut *conn).await {
            Ok(rows) => rows,
            Err(e) => {
                // Whatever failed, the connection leaves no transaction open
                // (this fails harmlessly when the unique index already rolled
                // it back).
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return failed(e);
            }
        }
    } else {
        let mut tx = writer.begin().await.map_err(unavailable)?;
        let mut ids: Vec<Id> = counts.iter().map(|c| c.0).collect();
        ids.sort_unstable();
        lock_conversations(&mut tx, &ids).await?;
        if let Some(sql) = &seen_sql {
            let q = sqlx::query(sql).persistent(false);
            if let Err(e) = bind_seen(q, &seen).execute(&mut *tx).await {
                return failed(e);
            }
        }
        let mut rows = Vec::new();
        if let (Some(insert), Some(update)) = (&insert_sql, &update_sql) {
            if let Err(e) = bind_messages(sqlx::query(insert).persistent(false), messages, &places)
                .execute(&mut *tx)
                .await
            {
                return failed(e);
            }
            rows = match bind_counts(sqlx::query(update).persistent(false), &counts)
                .fetch_all(&mut *tx)
                .await
            {
                Ok(rows) => rows,
                Err(e) => return failed(e),
            };
        }
        tx.commit().await.map_err(unavailable)?;
        rows
    };
    // The newest id of each conversation found, less its messages in the batch.
    let mut before = std::collections::HashMap::with_capacity(rows.len());
    for r in rows {
        let (Ok(id), Ok(last)) = (r.try_get::<Id, _>("id"), r.try_get::<Id, _>("last")) else {
            // Committed, but the ids cannot be read back: each send is answered
            // as the store's fault (its last-seen writes did happen), not as a
            // failed transaction.
            return Ok(Some(
                messages
                    .iter()
                    .map(|_| {
                        Err(StoreError::Corrupt(
                            "a stored batch's ids could not be read back".into(),
                        ))
                    })
                    .collect(),
            ));
        };
        let n = index.get(&id).map_or(0, |&i| counts[i].1);
        before.insert(id, last - n);
    }
    Ok(Some(
        messages
            .iter()
            .zip(places)
            .map(|(m, place)| match before.get(&m.conversation_id) {
                Some(base) => Ok((
                    Message {
                        conversation_id: m.conversation_id,
                        id: base + place,
                        sender_id: m.sender_id,
                        kind: m.kind.clone(),
                        body: m.body.clone(),
                        client_id: m.client_id.clone(),
                        created_at: m.at,
                    },
                    true,
                )),
                None => Err(StoreError::NotFound("conversation")),
            })
            .collect(),
    ))
}

/// `(?, ?, …), (…)`: `rows` rows of `columns` parameters, bound in order:
/// unnumbered on SQLite (which finds a numbered parameter's name by a walk of
/// all the statement's names: binding a large batch took as long as storing
/// it), `$1…` on PostgreSQL.
fn placeholders(engine: Engine, rows: usize, columns: usize) -> String {
    let mut s = String::with_capacity(rows * columns * 4);
    for r in 0..rows {
        s.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                s.push_str(", ");
            }
            match engine {
                Engine::Sqlite => s.push('?'),
                Engine::Postgres => {
                    s.push('$');
                    s.push_str(&(r * columns + c + 1).to_string());
                }
            }
        }
        s.push(')');
    }
    s
}

/// `$1, $2, …`: `n` parameters for an `IN` list (`?, ?, …` on SQLite).
fn list(engine: Engine, n: usize) -> String {
    let row = placeholders(engine, 1, n);
    row[1..row.len() - 1].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several last-seen times of one user in one batch: the latest is kept,
    /// whatever their order.
    #[tokio::test]
    async fn a_batch_keeps_a_users_latest_seen_time() {
        let path = std::env::temp_dir().join(format!(
            "herald-chat-seen-{}-{}.db",
            std::process::id(),
            now_ms()
        ));
        let store = SqlStore::sqlite(&path, 2).await.unwrap();
        let agent = NewAgent {
            username: "seen-agent",
            nickname: "a",
            password_hash: "x",
        };
        let (shop, _) = store.create_shop("seen", &agent, 1).await.unwrap();
        let v = store.create_visitor(shop.id, "v", None, 1).await.unwrap();
        let stored = append_together(
            &store.writer,
            Engine::Sqlite,
            &[],
            &[(v.id, 8_000), (v.id, 9_000), (v.id, 7_000)],
        )
        .await
        .unwrap();
        assert!(stored.is_some_and(|s| s.is_empty()));
        let v = store.user(v.id).await.unwrap().unwrap();
        assert_eq!(v.last_seen_at, 9_000);
        store.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
