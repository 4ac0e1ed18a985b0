-- Muted groups per user: until_ms is the end of the mute, -1 for ever.
-- Unmuting deletes the row.
CREATE TABLE IF NOT EXISTS push_mutes (
    uid       TEXT    NOT NULL,
    gid       INTEGER NOT NULL,
    until_ms  INTEGER NOT NULL,
    PRIMARY KEY (uid, gid)
);
