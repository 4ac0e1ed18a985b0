-- One row per user who has registered a push token: the row a registration
-- locks so a user's registrations take turns and the device cap holds, without
-- locking a range other users' registrations insert into.
CREATE TABLE IF NOT EXISTS push_users (
    uid VARCHAR(64) NOT NULL,
    PRIMARY KEY (uid)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
