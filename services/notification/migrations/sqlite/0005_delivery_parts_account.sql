-- A delivery's alerts and attempts carry its account, as on PostgreSQL; rows from before get
-- it from their delivery.
ALTER TABLE delivery_alerts ADD COLUMN account_id TEXT NOT NULL DEFAULT '';
ALTER TABLE delivery_attempts ADD COLUMN account_id TEXT NOT NULL DEFAULT '';
UPDATE delivery_alerts SET account_id = COALESCE((SELECT d.account_id FROM deliveries d
    WHERE d.id = delivery_alerts.delivery_id), '');
UPDATE delivery_attempts SET account_id = COALESCE((SELECT d.account_id FROM deliveries d
    WHERE d.id = delivery_attempts.delivery_id), '');
CREATE INDEX delivery_alerts_by_alert ON delivery_alerts (account_id, alert_id);
DROP INDEX delivery_alerts_alert;
