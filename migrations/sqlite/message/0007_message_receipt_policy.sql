-- The receipt policy each message was sent under (see 0006), which the
-- receipt service holds it to for good.
ALTER TABLE group_msgs ADD COLUMN receipt_policy SMALLINT NOT NULL DEFAULT 1;
