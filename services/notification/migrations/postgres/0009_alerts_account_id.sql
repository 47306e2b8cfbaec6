-- no-transaction
-- An alert's id unique within its account (0012 drops the key by id alone).
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS alerts_account_id ON alerts (account_id, id);
