-- The account an event received belongs to: the inbox, as every table, is keyed by account so
-- that it distributes by account. Rows from before carry none ('').
ALTER TABLE inbox ADD COLUMN account_id TEXT NOT NULL DEFAULT '';
