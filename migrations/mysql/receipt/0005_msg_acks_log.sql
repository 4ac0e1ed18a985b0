-- The read-receipt ledger becomes a log of read acks: one row each time a
-- member's read cursor in a group moves past a message that keeps read times,
-- "recv_uid had read everything up to seq at changed_at_ms". Who read a
-- message comes from the cursors (exact at every size); when each reader read
-- it is the time of their first row at or past its seq. A message costs no
-- rows; a reader's ack costs one. Rows leave with retention (by age).
--
-- Existing read rows carry over as they are: a row that said "read" at a seq
-- says that the reader had read up to it by then, since acks are cumulative.
CREATE TABLE msg_acks_log (
    gid            BIGINT      NOT NULL,
    recv_uid       VARCHAR(64) NOT NULL,
    seq            BIGINT      NOT NULL,
    changed_at_ms  BIGINT      NOT NULL,
    PRIMARY KEY (gid, recv_uid, seq),
    KEY msg_acks_by_age (changed_at_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
INSERT INTO msg_acks_log (gid, recv_uid, seq, changed_at_ms)
    SELECT gid, recv_uid, seq, changed_at_ms FROM msg_acks WHERE if_ack = 2;
DROP TABLE msg_acks;
RENAME TABLE msg_acks_log TO msg_acks;
