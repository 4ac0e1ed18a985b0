-- A member's earlier stays in a group, closed (see the MySQL migration of
-- the same number).
CREATE TABLE group_user_stays (
    gid         INTEGER NOT NULL,
    uid         TEXT    NOT NULL,
    joined_seq  INTEGER NOT NULL,
    left_seq    INTEGER NOT NULL,
    PRIMARY KEY (gid, uid, joined_seq)
) WITHOUT ROWID;
