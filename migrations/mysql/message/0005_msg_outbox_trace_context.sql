-- The W3C traceparent of the send that wrote an entry, so its delivery
-- continues the same trace; empty when the send was not traced.
ALTER TABLE msg_outbox ADD COLUMN trace_context VARCHAR(64) NOT NULL DEFAULT '';
