-- no-transaction
-- An event by its account and id, as the relay settles it (0008 drops the key by id alone).
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS outbox_account_event ON outbox (account_id, event_id);
