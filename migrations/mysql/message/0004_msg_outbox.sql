-- The transactional outbox: written in the same transaction as the message or
-- membership change it describes, drained to the receipt service in id order.
-- kind 1 = message sent (gid, seq); kind 2 = membership changed (gid, uid).
CREATE TABLE IF NOT EXISTS msg_outbox (
    id             BIGINT       NOT NULL AUTO_INCREMENT,
    kind           SMALLINT     NOT NULL,
    gid            BIGINT       NOT NULL,
    seq            BIGINT       NOT NULL DEFAULT 0,
    uid            VARCHAR(64)  NOT NULL DEFAULT '',
    attempts       INT          NOT NULL DEFAULT 0,
    dead           BOOLEAN      NOT NULL DEFAULT FALSE,
    last_error     VARCHAR(255) NULL,
    created_at_ms  BIGINT       NOT NULL,
    PRIMARY KEY (id),
    KEY msg_outbox_pending (dead, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
