-- Uploaded files: who sent what into which conversation. The bytes are kept
-- by the blob seam (a directory, or chat_blobs below).
CREATE TABLE chat_uploads (
    id TEXT PRIMARY KEY,
    conversation_id BIGINT NOT NULL REFERENCES chat_conversations(id) ON DELETE CASCADE,
    uploader_id BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX chat_uploads_conversation ON chat_uploads (conversation_id);

CREATE TABLE chat_blobs (
    id TEXT PRIMARY KEY,
    data BYTEA NOT NULL
);
