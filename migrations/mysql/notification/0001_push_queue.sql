-- Offline pushes waiting to be sent: one row per recipient of a message, keyed
-- so that a re-delivered EnqueueOffline batch adds nothing. Stored before
-- EnqueueOffline answers, so a restart loses none.
CREATE TABLE IF NOT EXISTS push_queue (
    uid             VARCHAR(64)  NOT NULL,
    gid             BIGINT       NOT NULL,
    seq             BIGINT       NOT NULL,
    msgid           BIGINT       NOT NULL,
    sender_uid      VARCHAR(64)  NOT NULL,
    group_name      VARCHAR(128) NOT NULL,
    enqueued_at_ms  BIGINT       NOT NULL,
    PRIMARY KEY (uid, gid, seq),
    KEY push_queue_age (enqueued_at_ms)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
