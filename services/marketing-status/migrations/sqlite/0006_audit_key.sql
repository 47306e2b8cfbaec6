-- The audit trail keyed by account, contact and id: that one index serves both the key and the
-- lookups by contact, which had an index of their own. Every status change writes an audit row,
-- so one index entry fewer makes bulk changes, imports and update dates write less. Audit ids
-- stay unique (new ids, or a request's prefix and the contact id). SQLite cannot change a key
-- in place: the table is copied, and the view over it made again.
DROP VIEW status_trail;

CREATE TABLE status_changes_keyed (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    pending BOOLEAN NOT NULL,
    source_type TEXT NOT NULL,
    source_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    effective_at INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    PRIMARY KEY (account_id, contact_id, id)
);
INSERT INTO status_changes_keyed (account_id, id, contact_id, from_status, to_status, pending, source_type,
    source_id, user_id, requested_at, effective_at, request_id)
SELECT account_id, id, contact_id, from_status, to_status, pending, source_type, source_id, user_id,
    requested_at, effective_at, request_id
FROM status_changes;
DROP TABLE status_changes;
ALTER TABLE status_changes_keyed RENAME TO status_changes;

-- As in 0005.
CREATE VIEW status_trail AS
SELECT account_id, id, contact_id, from_status, to_status, pending, source_type, source_id, user_id,
    requested_at, effective_at, request_id
FROM status_changes
UNION ALL
SELECT s.account_id, m.audit_prefix || s.contact_id, s.contact_id, 'marketing', 'non_marketing', FALSE,
    'SYSTEM', m.update_date, '', m.applied_at, m.effective_at, ''
FROM contact_status s JOIN update_marks m ON m.account_id = s.account_id
WHERE s.pending AND s.updated_at <= m.cutoff;
