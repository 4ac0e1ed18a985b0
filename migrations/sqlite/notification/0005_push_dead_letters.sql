-- Pushes given up on after the last attempt, with the reason: for operators.
CREATE TABLE IF NOT EXISTS push_dead_letters (
    uid           TEXT    NOT NULL,
    gid           INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL,
    device_id     TEXT    NOT NULL,
    platform      INTEGER NOT NULL,
    messages      INTEGER NOT NULL,
    attempts      INTEGER NOT NULL,
    reason        TEXT    NOT NULL,
    failed_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (uid, gid, last_seq, device_id)
);
CREATE INDEX IF NOT EXISTS push_dead_letters_age ON push_dead_letters (failed_at_ms);
