-- Times are epoch microseconds; dates are YYYY-MM-DD. Every table is keyed by account first.

-- The four status properties of each contact.
CREATE TABLE contact_status (
    account_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    marketing BOOLEAN NOT NULL,
    -- Marketing until the next update date.
    pending BOOLEAN NOT NULL,
    source_type TEXT NOT NULL,
    source_id TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, contact_id)
);
CREATE INDEX contact_status_pending ON contact_status (account_id, pending);

-- The live counts, changed in the same transaction as every status change; read in O(1).
CREATE TABLE account_counts (
    account_id TEXT PRIMARY KEY,
    marketing INTEGER NOT NULL,
    pending INTEGER NOT NULL,
    non_marketing INTEGER NOT NULL,
    version INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The audit trail.
CREATE TABLE status_changes (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status TEXT NOT NULL,
    pending BOOLEAN NOT NULL,
    source_type TEXT NOT NULL,
    source_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    effective_at INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE INDEX status_changes_contact ON status_changes (account_id, contact_id);

-- Requests already carried out, so a retry returns the first answer and changes nothing.
CREATE TABLE status_requests (
    account_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    response BLOB NOT NULL,
    PRIMARY KEY (account_id, request_id)
);

-- Update dates applied, so applying one twice changes nothing.
CREATE TABLE applied_update_dates (
    account_id TEXT NOT NULL,
    update_date TEXT NOT NULL,
    applied INTEGER NOT NULL,
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (account_id, update_date)
);

-- Users whose "may set marketing" permission was removed (granted by default).
CREATE TABLE user_permissions (
    account_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    may_set_marketing BOOLEAN NOT NULL,
    PRIMARY KEY (account_id, user_id)
);
