-- no-transaction
-- One list per name key in an account, also under concurrent creates and renames. Built
-- without blocking the replicas that write lists meanwhile.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS lists_name_key ON lists (account_id, name_key);
