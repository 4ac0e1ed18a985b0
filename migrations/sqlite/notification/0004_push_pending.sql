-- One row per (user, group) with queued pushes: when the collapsed push for
-- them is due. A worker claims a row by moving due_at_ms to the end of its
-- lease; a row whose lease ran out is due again.
CREATE TABLE IF NOT EXISTS push_pending (
    uid        TEXT    NOT NULL,
    gid        INTEGER NOT NULL,
    due_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (uid, gid)
);
CREATE INDEX IF NOT EXISTS push_pending_due ON push_pending (due_at_ms);
