-- Times are epoch microseconds; dates are YYYY-MM-DD. Every table is keyed by account first.

CREATE TABLE subscriptions (
    account_id TEXT PRIMARY KEY,
    edition TEXT NOT NULL,
    term TEXT NOT NULL,
    start_date TEXT NOT NULL,
    currency TEXT NOT NULL,
    subsidiary TEXT NOT NULL,
    tier INTEGER NOT NULL,
    -- A lower tier asked for the next renewal; 0 when none.
    renewal_tier INTEGER NOT NULL DEFAULT 0,
    -- Accounts that predate marketing contacts are billed for every contact.
    marketing_contacts_enabled BOOLEAN NOT NULL,
    created_at INTEGER NOT NULL
);

-- The latest count marketing-status reported; an event with a lower version never overwrites it.
CREATE TABLE account_counts (
    account_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    marketing INTEGER NOT NULL,
    pending_non_marketing INTEGER NOT NULL,
    non_marketing INTEGER NOT NULL,
    observed_at INTEGER NOT NULL
);

CREATE TABLE upgrades (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL UNIQUE,
    from_tier INTEGER NOT NULL,
    to_tier INTEGER NOT NULL,
    marketing_count INTEGER NOT NULL,
    count_version INTEGER NOT NULL,
    upgraded_at INTEGER NOT NULL,
    -- The business day of the upgrade, in the subsidiary's zone.
    effective_date TEXT NOT NULL,
    invoice_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (account_id, id)
);
CREATE INDEX upgrades_uninvoiced ON upgrades (invoice_id, effective_date);

-- Invoice numbers per account, gap-free: taken in the transaction that issues the invoice.
CREATE TABLE invoice_counters (
    account_id TEXT PRIMARY KEY,
    last_number INTEGER NOT NULL
);

-- Immutable once written. source_key names what the invoice charges (one per upgrade day,
-- one per renewal), so an invoice is issued once however often the run repeats.
CREATE TABLE invoices (
    account_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    source_key TEXT NOT NULL,
    total_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    term_start TEXT NOT NULL,
    term_end TEXT NOT NULL,
    -- The lines with every input they were computed from, as JSON.
    lines TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, number),
    UNIQUE (account_id, source_key)
);

-- One row per account and business day, for usage charts.
CREATE TABLE usage_daily (
    account_id TEXT NOT NULL,
    day TEXT NOT NULL,
    max_count INTEGER NOT NULL,
    last_count INTEGER NOT NULL,
    tier INTEGER NOT NULL,
    PRIMARY KEY (account_id, day)
);
