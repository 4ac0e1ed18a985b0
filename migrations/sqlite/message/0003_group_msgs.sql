-- One stored copy of each message. (gid, seq) is the conversation order;
-- (gid, sender_uid, client_msg_id) makes a retried send return the original.
CREATE TABLE IF NOT EXISTS group_msgs (
    msgid            INTEGER PRIMARY KEY AUTOINCREMENT,
    gid              INTEGER NOT NULL,
    seq              INTEGER NOT NULL,
    sender_uid       TEXT    NOT NULL,
    client_msg_id    TEXT    NOT NULL,
    content          BLOB    NOT NULL,
    need_receipt     INTEGER NOT NULL,
    recipient_count  INTEGER NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    UNIQUE (gid, seq),
    UNIQUE (gid, sender_uid, client_msg_id)
);
