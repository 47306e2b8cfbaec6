-- no-transaction
-- A delivery's attempts keyed by account first (0012 makes it the key).
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS delivery_attempts_key ON delivery_attempts (account_id, delivery_id, attempt);
