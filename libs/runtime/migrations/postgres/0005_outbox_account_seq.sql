-- no-transaction
-- The outbox's key by account and sequence, built without blocking the writers (0008 makes it
-- the key): a unique key that does not begin with the account cannot be kept once the tables
-- distribute by account. One index a file: PostgreSQL builds one concurrently only outside a
-- transaction, and statements sent together share one.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS outbox_account_seq ON outbox (account_id, seq);
