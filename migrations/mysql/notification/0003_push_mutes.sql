-- Muted groups per user: until_ms is the end of the mute, -1 for ever.
-- Unmuting deletes the row.
CREATE TABLE IF NOT EXISTS push_mutes (
    uid       VARCHAR(64) NOT NULL,
    gid       BIGINT      NOT NULL,
    until_ms  BIGINT      NOT NULL,
    PRIMARY KEY (uid, gid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
