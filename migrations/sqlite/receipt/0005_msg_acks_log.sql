-- The read-receipt ledger becomes a log of read acks (see the MySQL
-- migration): one row each time a member's read cursor moves past a message
-- that keeps read times. Existing read rows carry over.
CREATE TABLE msg_acks_log (
    gid            INTEGER NOT NULL,
    recv_uid       TEXT    NOT NULL,
    seq            INTEGER NOT NULL,
    changed_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (gid, recv_uid, seq)
) WITHOUT ROWID;
INSERT INTO msg_acks_log (gid, recv_uid, seq, changed_at_ms)
    SELECT gid, recv_uid, seq, changed_at_ms FROM msg_acks WHERE if_ack = 2;
DROP TABLE msg_acks;
ALTER TABLE msg_acks_log RENAME TO msg_acks;
CREATE INDEX msg_acks_by_age ON msg_acks (changed_at_ms);
