-- Usage states from billing, evaluated one by one in version order. A state that arrives
-- before the one ahead of it waits here; evaluated ones are removed.
CREATE TABLE usage_states (
    account_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    period_start TEXT NOT NULL,
    tier BIGINT NOT NULL,
    marketing_count BIGINT NOT NULL,
    upgrade_id TEXT NOT NULL,
    from_tier BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, version)
);

-- What evaluation keeps per account: the last state evaluated, its period and tier, and the
-- highest count reached in them.
CREATE TABLE usage_evaluated (
    account_id TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    period_start TEXT NOT NULL,
    tier BIGINT NOT NULL,
    high BIGINT NOT NULL
);

-- Threshold alerts name the share of the tier and the state that fired them.
ALTER TABLE alerts ADD COLUMN used_basis_points BIGINT NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN state_version BIGINT NOT NULL DEFAULT 0;

-- A delivery carries the alerts that fired within its digest window, in order; it takes more
-- until open_until (0 once it is sent).
ALTER TABLE deliveries ADD COLUMN open_until BIGINT NOT NULL DEFAULT 0;
CREATE TABLE delivery_alerts (
    delivery_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    alert_id TEXT NOT NULL,
    PRIMARY KEY (delivery_id, position)
);
CREATE INDEX delivery_alerts_alert ON delivery_alerts (alert_id);
INSERT INTO delivery_alerts (delivery_id, position, alert_id) SELECT id, 0, alert_id FROM deliveries;
