-- The account's usage state (update period, tier, marketing count) is versioned here and
-- published to notification whenever any part changes. period_start is the update period that
-- billing has opened: the last update date processed, or the period the subscription began in.
ALTER TABLE subscriptions ADD COLUMN state_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE subscriptions ADD COLUMN period_start TEXT NOT NULL DEFAULT '';
-- The first period's row: its count is the first count known in it.
ALTER TABLE update_periods ADD COLUMN first_period BOOLEAN NOT NULL DEFAULT FALSE;
