-- no-transaction
-- An invoice's id unique within its account (an upgrade's key is its account and id already),
-- built without blocking the writers; 0009 drops the keys by id alone. A unique key that does
-- not begin with the account cannot be kept once the tables distribute by account.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS invoices_account_id ON invoices (account_id, id);
