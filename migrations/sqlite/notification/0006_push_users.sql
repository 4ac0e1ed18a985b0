-- One row per user who has registered a push token: the row a registration
-- locks (on MySQL) so a user's registrations take turns and the device cap holds.
CREATE TABLE IF NOT EXISTS push_users (
    uid TEXT NOT NULL PRIMARY KEY
);
