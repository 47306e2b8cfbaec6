-- no-transaction
-- One delivery per alert and recipient, within the account (0012 drops the key without it).
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS deliveries_account_alert_recipient ON deliveries (account_id, alert_id, recipient_id);
