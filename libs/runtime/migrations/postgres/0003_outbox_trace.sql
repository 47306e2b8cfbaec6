-- The trace of the change an event describes (a W3C traceparent), so its delivery continues
-- that trace in the receiving service. Nullable, no default: adding it rewrites nothing.
ALTER TABLE outbox ADD COLUMN trace_context TEXT;
