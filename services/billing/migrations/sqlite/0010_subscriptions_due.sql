-- The update-date run's poll reads dates due in (time, account) order a batch at a time: with
-- the time alone in the index, every poll of an instant shared by many accounts sorted all of
-- them.
CREATE INDEX IF NOT EXISTS subscriptions_due ON subscriptions (next_update_at, account_id)
    WHERE next_update_date <> '';
