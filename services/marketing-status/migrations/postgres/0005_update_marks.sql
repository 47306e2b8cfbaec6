-- An update date takes effect in one transaction: its mark is written and the counts change.
-- The contacts it covers (pending, set so at or before `cutoff`) are rewritten afterwards, a
-- chunk at a time; until then they read as rewritten through the two views below, which is
-- exactly what the rewrite will store. At most one mark per account: a later date waits until
-- the earlier one's contacts are rewritten.
CREATE TABLE update_marks (
    account_id TEXT PRIMARY KEY,
    update_date TEXT NOT NULL,
    effective_at BIGINT NOT NULL,
    applied_at BIGINT NOT NULL,
    cutoff BIGINT NOT NULL,
    -- Audit ids of the rewritten contacts: this prefix and the contact id.
    audit_prefix TEXT NOT NULL
);

-- Each contact's status as in effect now.
CREATE VIEW contact_status_now AS
SELECT s.account_id, s.contact_id,
    CASE WHEN s.pending AND s.updated_at <= m.cutoff THEN FALSE ELSE s.marketing END AS marketing,
    CASE WHEN s.pending AND s.updated_at <= m.cutoff THEN FALSE ELSE s.pending END AS pending,
    CASE WHEN s.pending AND s.updated_at <= m.cutoff THEN 'SYSTEM' ELSE s.source_type END AS source_type,
    CASE WHEN s.pending AND s.updated_at <= m.cutoff THEN m.update_date ELSE s.source_id END AS source_id,
    CASE WHEN s.pending AND s.updated_at <= m.cutoff THEN m.applied_at ELSE s.updated_at END AS updated_at
FROM contact_status s LEFT JOIN update_marks m ON m.account_id = s.account_id;

-- The audit trail, with the entries of the contacts still to be rewritten.
CREATE VIEW status_trail AS
SELECT account_id, id, contact_id, from_status, to_status, pending, source_type, source_id, user_id,
    requested_at, effective_at, request_id
FROM status_changes
UNION ALL
SELECT s.account_id, m.audit_prefix || s.contact_id, s.contact_id, 'marketing', 'non_marketing', FALSE,
    'SYSTEM', m.update_date, '', m.applied_at, m.effective_at, ''
FROM contact_status s JOIN update_marks m ON m.account_id = s.account_id
WHERE s.pending AND s.updated_at <= m.cutoff;
