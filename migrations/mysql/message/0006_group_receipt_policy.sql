-- Each group's receipt policy: 1 full (counts and lists), 2 counts only,
-- 3 off. Its admins change it; a change holds from the next message on.
ALTER TABLE chat_groups ADD COLUMN receipt_policy SMALLINT NOT NULL DEFAULT 1;
