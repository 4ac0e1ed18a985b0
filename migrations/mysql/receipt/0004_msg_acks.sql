-- The read-receipt ledger (seed 002 section 6): one row per recipient of a
-- message that wants receipts, in groups up to the ledger size. if_ack:
-- 0 = not delivered, 1 = delivered, 2 = read. Keyed so one statement flips a
-- reader's rows up to a seq; rows are deleted when everyone has read the message
-- or when they pass retention.
CREATE TABLE IF NOT EXISTS msg_acks (
    gid            BIGINT      NOT NULL,
    recv_uid       VARCHAR(64) NOT NULL,
    seq            BIGINT      NOT NULL,
    msgid          BIGINT      NOT NULL,
    sender_uid     VARCHAR(64) NOT NULL,
    if_ack         SMALLINT    NOT NULL,
    changed_at_ms  BIGINT      NOT NULL,
    PRIMARY KEY (gid, recv_uid, seq),
    KEY msg_acks_by_message (gid, seq, if_ack, recv_uid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
