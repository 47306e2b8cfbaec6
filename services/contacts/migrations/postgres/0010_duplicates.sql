-- The keys a contact is matched by for duplicate candidates (its mailbox at forgiving
-- providers, its phone's digits, its name with its company), written with its values.
CREATE TABLE contact_match_keys (
    account_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    match_key TEXT NOT NULL,
    PRIMARY KEY (account_id, contact_id, reason)
);
CREATE INDEX contact_match_keys_by_key ON contact_match_keys (account_id, reason, match_key);

-- Pairs a person has said are not one contact (contact_a < contact_b).
CREATE TABLE duplicate_dismissals (
    account_id TEXT NOT NULL,
    contact_a TEXT NOT NULL,
    contact_b TEXT NOT NULL,
    dismissed_by TEXT NOT NULL,
    dismissed_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, contact_a, contact_b)
);

-- 1 once a contact's match keys are written; contacts from before are keyed in the background.
ALTER TABLE contacts ADD COLUMN match_keys_version BIGINT NOT NULL DEFAULT 0;
