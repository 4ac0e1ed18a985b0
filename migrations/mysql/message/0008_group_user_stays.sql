-- A member's earlier stays in a group, closed: when someone who left is
-- added again, their row in group_users starts the new stay and the one
-- that ended moves here. "Who was a member when seq N was sent" reads both,
-- and the receipt service is told each member's past stays, so answers for
-- messages of an earlier stay stay exact. A stay in which no message was
-- sent (joined and left at the same seq) is not kept.
CREATE TABLE group_user_stays (
    gid         BIGINT      NOT NULL,
    uid         VARCHAR(64) NOT NULL,
    joined_seq  BIGINT      NOT NULL,
    left_seq    BIGINT      NOT NULL,
    PRIMARY KEY (gid, uid, joined_seq)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
