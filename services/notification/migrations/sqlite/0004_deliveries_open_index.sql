-- Open digests of a recipient, found as alerts are delivered.
CREATE INDEX IF NOT EXISTS deliveries_open ON deliveries (account_id, recipient_id, open_until);
