-- Offline pushes waiting to be sent: one row per recipient of a message, keyed
-- so that a re-delivered EnqueueOffline batch adds nothing. Stored before
-- EnqueueOffline answers, so a restart loses none.
CREATE TABLE IF NOT EXISTS push_queue (
    uid             TEXT    NOT NULL,
    gid             INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    msgid           INTEGER NOT NULL,
    sender_uid      TEXT    NOT NULL,
    group_name      TEXT    NOT NULL,
    enqueued_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (uid, gid, seq)
);
CREATE INDEX IF NOT EXISTS push_queue_age ON push_queue (enqueued_at_ms);
