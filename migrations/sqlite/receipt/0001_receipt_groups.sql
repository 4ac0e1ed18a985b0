-- The last seq of each group as the receipt service knows it (from InitReceipts).
CREATE TABLE IF NOT EXISTS receipt_groups (
    gid       INTEGER NOT NULL PRIMARY KEY,
    last_seq  INTEGER NOT NULL DEFAULT 0
);
