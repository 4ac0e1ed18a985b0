-- Groups and direct conversations. `last_seq` is the group's sequence counter:
-- the send transaction increments it first, so seqs are dense.
CREATE TABLE IF NOT EXISTS chat_groups (
    gid            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind           INTEGER NOT NULL,
    name           TEXT    NOT NULL,
    creator_uid    TEXT    NOT NULL,
    direct_key     TEXT    NULL UNIQUE,
    last_seq       INTEGER NOT NULL DEFAULT 0,
    member_count   INTEGER NOT NULL DEFAULT 0,
    created_at_ms  INTEGER NOT NULL
);
