-- no-transaction
-- Finds the contacts whose match keys are still to be written without reading the others.
CREATE INDEX CONCURRENTLY IF NOT EXISTS contacts_unkeyed ON contacts (account_id, id) WHERE match_keys_version = 0;
