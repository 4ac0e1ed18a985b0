-- The last seq of each group as the receipt service knows it (from InitReceipts),
-- for unread counts; its row is also the per-group lock between acks (shared)
-- and InitReceipts (exclusive).
CREATE TABLE IF NOT EXISTS receipt_groups (
    gid       BIGINT NOT NULL,
    last_seq  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (gid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
