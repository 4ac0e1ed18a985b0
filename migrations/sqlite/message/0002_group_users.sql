-- Membership, with history: a member who leaves keeps the row with `left_seq`
-- set, so "who was a member when seq N was sent" stays answerable.
CREATE TABLE IF NOT EXISTS group_users (
    gid           INTEGER NOT NULL,
    uid           TEXT    NOT NULL,
    role          INTEGER NOT NULL,
    joined_seq    INTEGER NOT NULL,
    left_seq      INTEGER NULL,
    joined_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (gid, uid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_users_by_uid ON group_users (uid, gid);
