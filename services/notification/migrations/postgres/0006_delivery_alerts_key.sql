-- no-transaction
-- A delivery's alerts keyed by account first, built without blocking the writers (0012 makes
-- it the key): a unique key that does not begin with the account cannot be kept once the tables
-- distribute by account. One index a file: PostgreSQL builds one concurrently only outside a
-- transaction, and statements sent together share one.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS delivery_alerts_key ON delivery_alerts (account_id, delivery_id, position);
