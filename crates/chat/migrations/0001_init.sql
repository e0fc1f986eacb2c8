-- The chat schema, written for SQLite; PostgreSQL gets "id BIGINT GENERATED
-- ALWAYS AS IDENTITY PRIMARY KEY" for each "id INTEGER PRIMARY KEY AUTOINCREMENT"
-- (src/sql.rs). AUTOINCREMENT: an id is never given twice, even after its row
-- is purged (a purged visitor's token must not name a later one).

CREATE TABLE chat_shops (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE chat_users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    shop_id BIGINT NOT NULL REFERENCES chat_shops(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('agent', 'visitor')),
    username TEXT UNIQUE,
    nickname TEXT NOT NULL,
    password_hash TEXT,
    ip TEXT,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX chat_users_shop ON chat_users (shop_id, role, last_seen_at);

CREATE TABLE chat_conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    shop_id BIGINT NOT NULL REFERENCES chat_shops(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('kefu', 'direct')),
    visitor_id BIGINT UNIQUE REFERENCES chat_users(id) ON DELETE CASCADE,
    user_a BIGINT REFERENCES chat_users(id) ON DELETE CASCADE,
    user_b BIGINT REFERENCES chat_users(id) ON DELETE CASCADE,
    assignee_id BIGINT REFERENCES chat_users(id) ON DELETE SET NULL,
    last_message_id BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (user_a, user_b)
);
CREATE INDEX chat_conversations_shop ON chat_conversations (shop_id, updated_at);
CREATE INDEX chat_conversations_b ON chat_conversations (user_b);
CREATE INDEX chat_conversations_assignee ON chat_conversations (assignee_id);

CREATE TABLE chat_messages (
    conversation_id BIGINT NOT NULL REFERENCES chat_conversations(id) ON DELETE CASCADE,
    id BIGINT NOT NULL,
    sender_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    client_id TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, id)
);
CREATE UNIQUE INDEX chat_messages_client ON chat_messages (conversation_id, sender_id, client_id);

CREATE TABLE chat_reads (
    conversation_id BIGINT NOT NULL REFERENCES chat_conversations(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES chat_users(id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX chat_reads_user ON chat_reads (user_id);

CREATE TABLE chat_blacklist (
    shop_id BIGINT NOT NULL REFERENCES chat_shops(id) ON DELETE CASCADE,
    ip TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (shop_id, ip)
);

CREATE TABLE chat_canned (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    shop_id BIGINT NOT NULL REFERENCES chat_shops(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX chat_canned_shop ON chat_canned (shop_id);
