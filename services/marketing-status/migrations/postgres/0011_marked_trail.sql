-- The entries of contacts still to be rewritten after a date, on their own, so a page can take
-- the newest of the kept entries and of these apart (each by its own order) and merge them.
DROP VIEW status_trail;
CREATE VIEW marked_trail AS
SELECT s.account_id, m.audit_prefix || s.contact_id AS id, s.contact_id, 'marketing' AS from_status,
    'non_marketing' AS to_status, FALSE AS pending, 'SYSTEM' AS source_type, m.update_date AS source_id,
    '' AS user_id, m.applied_at AS requested_at, m.effective_at, '' AS request_id
FROM contact_status s JOIN update_marks m ON m.account_id = s.account_id
WHERE s.pending AND s.updated_at <= m.cutoff;
CREATE VIEW status_trail AS
SELECT account_id, id, contact_id, from_status, to_status, pending, source_type, source_id, user_id,
    requested_at, effective_at, request_id
FROM status_changes
UNION ALL
SELECT * FROM marked_trail;
