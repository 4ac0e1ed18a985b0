-- Reciprocal read privacy and membership as intervals (see the MySQL
-- migration of the same number for what each table and column means).
CREATE TABLE receipt_privacy (
    uid            TEXT    NOT NULL,
    gid            INTEGER NOT NULL,
    private        INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (uid, gid)
) WITHOUT ROWID;
CREATE TABLE receipt_stays (
    gid            INTEGER NOT NULL,
    uid            TEXT    NOT NULL,
    joined_seq     INTEGER NOT NULL,
    left_seq       INTEGER NOT NULL,
    shown_seq      INTEGER NOT NULL,
    shown_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (gid, uid, joined_seq)
) WITHOUT ROWID;
CREATE INDEX receipt_stays_by_shown ON receipt_stays (gid, shown_seq);
ALTER TABLE receipt_cursors ADD COLUMN private INTEGER NOT NULL DEFAULT 0;
ALTER TABLE receipt_cursors ADD COLUMN shown_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE receipt_cursors ADD COLUMN shown_at_ms INTEGER NOT NULL DEFAULT 0;
UPDATE receipt_cursors SET shown_seq = read_seq, shown_at_ms = updated_at_ms;
CREATE INDEX receipt_cursors_by_shown ON receipt_cursors (gid, shown_seq);
DROP INDEX receipt_cursors_by_read;
