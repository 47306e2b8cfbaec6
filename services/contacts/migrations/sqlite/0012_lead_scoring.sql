-- Lead scoring: an account's rules (their criterion as JSON) and its MQL threshold.
CREATE TABLE scoring_rules (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    points INTEGER NOT NULL,
    criterion TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE TABLE scoring_settings (
    account_id TEXT PRIMARY KEY,
    mql_threshold INTEGER NOT NULL
);

-- When a contact's score is due to be worked out again (0: not due): an event leaving a
-- rule's window, or rules that changed. The scoring worker takes due contacts a batch at a time.
ALTER TABLE contacts ADD COLUMN score_due_at INTEGER NOT NULL DEFAULT 0;
