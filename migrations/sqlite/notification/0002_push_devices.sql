-- Push tokens: one per device of a user. platform 1 = APNs, 2 = FCM; app_id is
-- the APNs topic or the FCM project.
CREATE TABLE IF NOT EXISTS push_devices (
    uid            TEXT    NOT NULL,
    device_id      TEXT    NOT NULL,
    platform       INTEGER NOT NULL,
    token          TEXT    NOT NULL,
    app_id         TEXT    NOT NULL,
    locale         TEXT    NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (uid, device_id)
);
