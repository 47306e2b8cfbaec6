-- The account an event received belongs to, as on PostgreSQL. Rows from before carry none ('').
ALTER TABLE inbox ADD COLUMN account_id TEXT NOT NULL DEFAULT '';
