-- Pending contacts are found through an index of them alone, in key order (the update date
-- walks it a chunk at a time). As a full index on (account, pending) it also offered the
-- planner a way to look contacts up by account and filter the ids, which it took whenever
-- its statistics had not yet seen an account's contacts: a scan of the account per id.
DROP INDEX contact_status_pending;
CREATE INDEX contact_status_pending ON contact_status (account_id, contact_id) WHERE pending;
