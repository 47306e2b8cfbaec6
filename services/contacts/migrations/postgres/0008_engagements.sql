-- The activity timeline: one row an engagement, its kind's details as JSON.
CREATE TABLE engagements (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    body TEXT NOT NULL,
    details TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);
-- A contact's timeline, newest first, of every kind or one.
CREATE INDEX engagements_timeline ON engagements (account_id, contact_id, occurred_at, id);

-- When the latest engagement happened (0: none); kept with the engagements that decide it.
ALTER TABLE contacts ADD COLUMN last_activity_at BIGINT NOT NULL DEFAULT 0;
