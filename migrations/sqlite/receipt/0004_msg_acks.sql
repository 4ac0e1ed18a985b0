-- The read-receipt ledger: one row per recipient of a message that wants
-- receipts. if_ack: 0 = not delivered, 1 = delivered, 2 = read.
CREATE TABLE IF NOT EXISTS msg_acks (
    gid            INTEGER NOT NULL,
    recv_uid       TEXT    NOT NULL,
    seq            INTEGER NOT NULL,
    msgid          INTEGER NOT NULL,
    sender_uid     TEXT    NOT NULL,
    if_ack         INTEGER NOT NULL,
    changed_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (gid, recv_uid, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS msg_acks_by_message ON msg_acks (gid, seq, if_ack, recv_uid);
