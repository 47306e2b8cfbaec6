-- no-transaction
-- A received event by its account and id. The inbox keeps its key by event id while replicas
-- from before, which ask for a conflict on it, may still run.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS inbox_account_event ON inbox (account_id, event_id);
