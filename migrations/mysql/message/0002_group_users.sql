-- Membership, with history: a member who leaves keeps the row with `left_seq`
-- set, so "who was a member when seq N was sent" stays answerable.
CREATE TABLE IF NOT EXISTS group_users (
    gid           BIGINT      NOT NULL,
    uid           VARCHAR(64) NOT NULL,
    role          SMALLINT    NOT NULL,
    joined_seq    BIGINT      NOT NULL,
    left_seq      BIGINT      NULL,
    joined_at_ms  BIGINT      NOT NULL,
    PRIMARY KEY (gid, uid),
    KEY group_users_by_uid (uid, gid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
