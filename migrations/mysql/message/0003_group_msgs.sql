-- One stored copy of each message. (gid, seq) is the conversation order;
-- (gid, sender_uid, client_msg_id) makes a retried send return the original.
CREATE TABLE IF NOT EXISTS group_msgs (
    msgid            BIGINT      NOT NULL AUTO_INCREMENT,
    gid              BIGINT      NOT NULL,
    seq              BIGINT      NOT NULL,
    sender_uid       VARCHAR(64) NOT NULL,
    client_msg_id    VARCHAR(64) NOT NULL,
    content          MEDIUMBLOB  NOT NULL,
    need_receipt     BOOLEAN     NOT NULL,
    recipient_count  BIGINT      NOT NULL,
    created_at_ms    BIGINT      NOT NULL,
    PRIMARY KEY (msgid),
    UNIQUE KEY group_msgs_by_seq (gid, seq),
    UNIQUE KEY group_msgs_idempotency (gid, sender_uid, client_msg_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
