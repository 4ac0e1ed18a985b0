-- Push tokens: one per device of a user. platform 1 = APNs, 2 = FCM; app_id is
-- the APNs topic or the FCM project.
CREATE TABLE IF NOT EXISTS push_devices (
    uid            VARCHAR(64)   NOT NULL,
    device_id      VARCHAR(64)   NOT NULL,
    platform       SMALLINT      NOT NULL,
    token          VARCHAR(4096) NOT NULL,
    app_id         VARCHAR(255)  NOT NULL,
    locale         VARCHAR(35)   NOT NULL,
    updated_at_ms  BIGINT        NOT NULL,
    PRIMARY KEY (uid, device_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
