-- The update-date run: each subscription knows its next update date and when it is processed.
-- A lease (owner and expiry) lets one replica at a time process an account's date; a failed
-- attempt pushes lease_until out as the retry time.
ALTER TABLE subscriptions ADD COLUMN next_update_date TEXT NOT NULL DEFAULT '';
ALTER TABLE subscriptions ADD COLUMN next_update_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE subscriptions ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
ALTER TABLE subscriptions ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE subscriptions ADD COLUMN update_attempts BIGINT NOT NULL DEFAULT 0;
CREATE INDEX subscriptions_next_update ON subscriptions (next_update_at);

-- One row per processed update date: the count that holds for the period it opens.
CREATE TABLE update_periods (
    account_id TEXT NOT NULL,
    update_date TEXT NOT NULL,
    renewal BOOLEAN NOT NULL,
    -- Contacts that became non-marketing at this date.
    applied_contacts BIGINT NOT NULL,
    period_count BIGINT NOT NULL,
    count_version BIGINT NOT NULL,
    tier BIGINT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, update_date)
);
