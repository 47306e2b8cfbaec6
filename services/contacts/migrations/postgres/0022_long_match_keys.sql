-- Match keys longer than 256 bytes are now kept as their digest: contacts keyed before are
-- keyed again in the background, so they still meet the contacts keyed since.
UPDATE contacts SET match_keys_version = 0
WHERE (account_id, id) IN (SELECT account_id, contact_id FROM contact_match_keys WHERE octet_length(match_key) > 256);
