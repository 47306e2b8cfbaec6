-- no-transaction
-- Replaced by delivery_alerts_by_alert (0008); dropped without blocking the writers.
DROP INDEX CONCURRENTLY IF EXISTS delivery_alerts_alert;
