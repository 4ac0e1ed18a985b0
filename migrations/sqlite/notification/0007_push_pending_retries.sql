-- A pair whose push a provider asked to retry (429, 5xx) is put back with the
-- retry's due time instead of holding a worker: how many attempts it has had,
-- and, while the push is unchanged (retry_seq is its last seq), the devices
-- still owed it ('|'-separated ids; NULL: every device).
ALTER TABLE push_pending ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE push_pending ADD COLUMN retry_devices TEXT;
ALTER TABLE push_pending ADD COLUMN retry_seq INTEGER NOT NULL DEFAULT 0;
