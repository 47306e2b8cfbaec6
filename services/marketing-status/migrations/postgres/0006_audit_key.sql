-- The audit trail keyed by account, contact and id: that one index serves both the key and the
-- lookups by contact, which had an index of their own. Every status change writes an audit row,
-- so one index entry fewer makes bulk changes, imports and update dates write less. Audit ids
-- stay unique (new ids, or a request's prefix and the contact id).
ALTER TABLE status_changes DROP CONSTRAINT status_changes_pkey;
DROP INDEX status_changes_contact;
ALTER TABLE status_changes ADD PRIMARY KEY (account_id, contact_id, id);
