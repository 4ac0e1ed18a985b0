-- A pair whose push a provider asked to retry (429, 5xx) is put back with the
-- retry's due time instead of holding a worker: how many attempts it has had,
-- and, while the push is unchanged (retry_seq is its last seq), the devices
-- still owed it ('|'-separated ids; NULL: every device).
ALTER TABLE push_pending
    ADD COLUMN attempts      INT           NOT NULL DEFAULT 0,
    ADD COLUMN retry_devices VARCHAR(1400) NULL,
    ADD COLUMN retry_seq     BIGINT        NOT NULL DEFAULT 0;
