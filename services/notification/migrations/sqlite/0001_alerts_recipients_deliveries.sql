-- Times are epoch microseconds; dates are YYYY-MM-DD. Every table is keyed by account first.

-- The last alert sequence per account: the feed's order and the watch stream's resume point.
CREATE TABLE alert_sequences (
    account_id TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL
);

CREATE TABLE alerts (
    account_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    marketing_count INTEGER NOT NULL,
    tier INTEGER NOT NULL,
    period_start TEXT NOT NULL,
    upgrade_id TEXT NOT NULL,
    new_tier INTEGER NOT NULL,
    invoice_id TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, sequence)
);

-- A usage alert fires once per account, tier, update period and threshold: this key says so.
CREATE TABLE fired_thresholds (
    account_id TEXT NOT NULL,
    tier INTEGER NOT NULL,
    period_start TEXT NOT NULL,
    threshold TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    PRIMARY KEY (account_id, tier, period_start, threshold)
);

CREATE TABLE recipients (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    address TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, id)
);

-- One per alert and recipient, written in the alert's transaction; the delivery worker sends it.
CREATE TABLE deliveries (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL UNIQUE,
    alert_id TEXT NOT NULL,
    recipient_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, id),
    UNIQUE (alert_id, recipient_id)
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);

CREATE TABLE delivery_attempts (
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at INTEGER NOT NULL,
    status_code INTEGER NOT NULL,
    error TEXT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
