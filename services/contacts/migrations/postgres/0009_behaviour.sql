-- Tracked behaviour: page views, form submissions, email opens and clicks, under the caller's
-- event id so a replay changes nothing.
CREATE TABLE contact_events (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    -- The page viewed, the form's page or the link clicked.
    url TEXT NOT NULL,
    form_id TEXT NOT NULL,
    email_id TEXT NOT NULL,
    traffic_source TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE INDEX contact_events_by_contact ON contact_events (account_id, contact_id, occurred_at, id);

-- A contact's visits, kept with the page views that make them (0 and '' before the first).
ALTER TABLE contacts ADD COLUMN visits BIGINT NOT NULL DEFAULT 0;
ALTER TABLE contacts ADD COLUMN first_visit_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE contacts ADD COLUMN last_visit_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE contacts ADD COLUMN last_view_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE contacts ADD COLUMN original_source TEXT NOT NULL DEFAULT '';
ALTER TABLE contacts ADD COLUMN latest_source TEXT NOT NULL DEFAULT '';
