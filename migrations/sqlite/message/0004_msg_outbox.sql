-- The transactional outbox: written in the same transaction as the message or
-- membership change it describes, drained to the receipt service in id order.
-- kind 1 = message sent (gid, seq); kind 2 = membership changed (gid, uid).
CREATE TABLE IF NOT EXISTS msg_outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    kind           INTEGER NOT NULL,
    gid            INTEGER NOT NULL,
    seq            INTEGER NOT NULL DEFAULT 0,
    uid            TEXT    NOT NULL DEFAULT '',
    attempts       INTEGER NOT NULL DEFAULT 0,
    dead           INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT    NULL,
    created_at_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS msg_outbox_pending ON msg_outbox (dead, id);
