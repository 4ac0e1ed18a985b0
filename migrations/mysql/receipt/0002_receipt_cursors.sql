-- Each member's delivered and read cursors per group (the seeds'
-- last_ack_msgid), with the membership they were derived from. Rows of members
-- who left stay, with left_seq, so cursor-tier answers for old messages hold.
CREATE TABLE IF NOT EXISTS receipt_cursors (
    gid            BIGINT      NOT NULL,
    uid            VARCHAR(64) NOT NULL,
    admin          BOOLEAN     NOT NULL,
    joined_seq     BIGINT      NOT NULL,
    left_seq       BIGINT      NULL,
    delivered_seq  BIGINT      NOT NULL,
    read_seq       BIGINT      NOT NULL,
    version        BIGINT      NOT NULL,
    updated_at_ms  BIGINT      NOT NULL,
    PRIMARY KEY (gid, uid),
    KEY receipt_cursors_by_uid (uid, gid),
    KEY receipt_cursors_by_read (gid, read_seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
