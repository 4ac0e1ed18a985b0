-- One row per sent message: N (recipients at send time), k (read_count, kept
-- current by acks) and whether ledger rows exist for it.
CREATE TABLE IF NOT EXISTS receipt_msgs (
    gid              BIGINT      NOT NULL,
    seq              BIGINT      NOT NULL,
    msgid            BIGINT      NOT NULL,
    sender_uid       VARCHAR(64) NOT NULL,
    recipient_count  BIGINT      NOT NULL,
    read_count       BIGINT      NOT NULL,
    ledger           BOOLEAN     NOT NULL,
    created_at_ms    BIGINT      NOT NULL,
    changed_at_ms    BIGINT      NOT NULL,
    PRIMARY KEY (gid, seq),
    UNIQUE KEY receipt_msgs_by_msgid (gid, msgid),
    KEY receipt_msgs_by_sender (sender_uid, changed_at_ms, msgid),
    KEY receipt_msgs_ledger_age (ledger, created_at_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
