-- The receipt policy each message was sent under (1 full, 2 counts only,
-- 3 off), from the message service: what its sender may see of its reads.
ALTER TABLE receipt_msgs ADD COLUMN policy SMALLINT NOT NULL DEFAULT 1;
