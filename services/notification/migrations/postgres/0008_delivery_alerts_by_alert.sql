-- no-transaction
-- The deliveries of an alert, within its account (replaces delivery_alerts_alert, 0011).
CREATE INDEX CONCURRENTLY IF NOT EXISTS delivery_alerts_by_alert ON delivery_alerts (account_id, alert_id);
