-- An account's upgrades of one day, read and marked by its invoice: without it the planner took
-- the uninvoiced index and read every account's upgrades of that day for each invoice.
CREATE INDEX IF NOT EXISTS upgrades_account_day ON upgrades (account_id, effective_date);
