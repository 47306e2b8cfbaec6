-- Times are epoch microseconds. Every table is keyed by account first.

CREATE TABLE contacts (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    email TEXT NOT NULL,
    -- The email lower-cased: unique per account without regard to case.
    email_key TEXT NOT NULL,
    -- Property values as a JSON object of strings, as answered.
    properties TEXT NOT NULL,
    version BIGINT NOT NULL,
    source_type TEXT NOT NULL,
    source_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, id),
    UNIQUE (account_id, email_key)
);
CREATE INDEX contacts_created ON contacts (account_id, created_at, id);

-- One row per set property, for search: the normalised text and, for numbers, the value.
CREATE TABLE contact_values (
    account_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    num REAL,
    PRIMARY KEY (account_id, contact_id, name)
);
CREATE INDEX contact_values_by_value ON contact_values (account_id, name, value);
CREATE INDEX contact_values_by_num ON contact_values (account_id, name, num);

-- Contacts per account, kept with every create and delete; read in O(1).
CREATE TABLE contact_totals (
    account_id TEXT PRIMARY KEY,
    total BIGINT NOT NULL
);

CREATE TABLE property_definitions (
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    label TEXT NOT NULL,
    type TEXT NOT NULL,
    -- JSON array of {value, label}.
    options TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, name)
);

-- Answers to requests with an idempotency key, so a retry returns the first answer.
CREATE TABLE request_answers (
    account_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    answer BLOB NOT NULL,
    PRIMARY KEY (account_id, request_id)
);

CREATE TABLE imports (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,
    rows_read BIGINT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    skipped BIGINT NOT NULL,
    failed BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);

CREATE TABLE import_errors (
    account_id TEXT NOT NULL,
    import_id TEXT NOT NULL,
    row_number BIGINT NOT NULL,
    column_name TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (account_id, import_id, row_number, column_name)
);

CREATE TABLE lists (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    -- Protobuf ContactFilter of an active list; empty for static lists.
    filter BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);

CREATE TABLE list_members (
    account_id TEXT NOT NULL,
    list_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, list_id, contact_id)
);
CREATE INDEX list_members_contact ON list_members (account_id, contact_id);

CREATE TABLE consents (
    account_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    legal_basis TEXT NOT NULL,
    opted_in_at BIGINT NOT NULL,
    -- JSON array of subscription type names.
    subscription_types TEXT NOT NULL,
    unsubscribed_from_all BOOLEAN NOT NULL,
    PRIMARY KEY (account_id, contact_id)
);
