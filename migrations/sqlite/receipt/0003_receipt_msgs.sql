-- One row per sent message: N, k (kept current by acks) and whether ledger rows exist.
CREATE TABLE IF NOT EXISTS receipt_msgs (
    gid              INTEGER NOT NULL,
    seq              INTEGER NOT NULL,
    msgid            INTEGER NOT NULL,
    sender_uid       TEXT    NOT NULL,
    recipient_count  INTEGER NOT NULL,
    read_count       INTEGER NOT NULL,
    ledger           INTEGER NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    changed_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (gid, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS receipt_msgs_by_msgid ON receipt_msgs (gid, msgid);
CREATE INDEX IF NOT EXISTS receipt_msgs_by_sender ON receipt_msgs (sender_uid, changed_at_ms, msgid);
CREATE INDEX IF NOT EXISTS receipt_msgs_ledger_age ON receipt_msgs (ledger, created_at_ms);
