-- One row per (user, group) with queued pushes: when the collapsed push for
-- them is due. A worker claims a row by moving due_at_ms to the end of its
-- lease; a row whose lease ran out is due again.
CREATE TABLE IF NOT EXISTS push_pending (
    uid        VARCHAR(64) NOT NULL,
    gid        BIGINT      NOT NULL,
    due_at_ms  BIGINT      NOT NULL,
    PRIMARY KEY (uid, gid),
    KEY push_pending_due (due_at_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
