-- Pushes given up on after the last attempt, with the reason: for operators.
CREATE TABLE IF NOT EXISTS push_dead_letters (
    uid           VARCHAR(64)  NOT NULL,
    gid           BIGINT       NOT NULL,
    last_seq      BIGINT       NOT NULL,
    device_id     VARCHAR(64)  NOT NULL,
    platform      SMALLINT     NOT NULL,
    messages      INT          NOT NULL,
    attempts      INT          NOT NULL,
    reason        VARCHAR(255) NOT NULL,
    failed_at_ms  BIGINT       NOT NULL,
    PRIMARY KEY (uid, gid, last_seq, device_id),
    KEY push_dead_letters_age (failed_at_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
