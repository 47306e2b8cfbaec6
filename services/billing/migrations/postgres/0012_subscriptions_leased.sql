-- no-transaction
-- When the update-date run is next due reads the earliest lease still running (a claim, or a
-- failed date's pause before its retry): the leased dates, a few at any time, on their own.
CREATE INDEX CONCURRENTLY IF NOT EXISTS subscriptions_leased ON subscriptions (lease_until) WHERE lease_until > 0;
