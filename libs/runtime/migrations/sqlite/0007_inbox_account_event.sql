-- A received event by its account and id, as on PostgreSQL.
CREATE UNIQUE INDEX IF NOT EXISTS inbox_account_event ON inbox (account_id, event_id);
