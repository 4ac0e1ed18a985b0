-- Groups and direct conversations. `last_seq` is the group's sequence counter:
-- the send transaction increments it under the row lock, so seqs are dense.
CREATE TABLE IF NOT EXISTS chat_groups (
    gid                BIGINT       NOT NULL AUTO_INCREMENT,
    kind               SMALLINT     NOT NULL,
    name               VARCHAR(128) NOT NULL,
    creator_uid        VARCHAR(64)  NOT NULL,
    direct_key         VARCHAR(130) NULL,
    last_seq           BIGINT       NOT NULL DEFAULT 0,
    member_count       BIGINT       NOT NULL DEFAULT 0,
    created_at_ms      BIGINT       NOT NULL,
    PRIMARY KEY (gid),
    UNIQUE KEY chat_groups_direct_key (direct_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
