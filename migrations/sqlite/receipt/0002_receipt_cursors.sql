-- Each member's delivered and read cursors per group, with the membership they
-- were derived from. Rows of members who left stay, with left_seq.
CREATE TABLE IF NOT EXISTS receipt_cursors (
    gid            INTEGER NOT NULL,
    uid            TEXT    NOT NULL,
    admin          INTEGER NOT NULL,
    joined_seq     INTEGER NOT NULL,
    left_seq       INTEGER NULL,
    delivered_seq  INTEGER NOT NULL,
    read_seq       INTEGER NOT NULL,
    version        INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (gid, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS receipt_cursors_by_uid ON receipt_cursors (uid, gid);
CREATE INDEX IF NOT EXISTS receipt_cursors_by_read ON receipt_cursors (gid, read_seq);
