-- Ending sessions: one token (logout), or every token of a user issued before a
-- time (a password change).
CREATE TABLE chat_revoked (
    jti TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX chat_revoked_expiry ON chat_revoked (expires_at);

ALTER TABLE chat_users ADD COLUMN sessions_after BIGINT NOT NULL DEFAULT 0;
