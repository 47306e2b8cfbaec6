-- Contacts an update date has changed so far; kept in each chunk's transaction.
ALTER TABLE applied_update_dates ADD COLUMN changed BIGINT NOT NULL DEFAULT 0;

-- An account's own default status for a customizable creation source.
CREATE TABLE source_defaults (
    account_id TEXT NOT NULL,
    source_type TEXT NOT NULL,
    marketing BOOLEAN NOT NULL,
    PRIMARY KEY (account_id, source_type)
);

-- Saved rules that set their contacts' status (Professional and Enterprise).
CREATE TABLE workflows (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    list_id TEXT NOT NULL,
    -- Protobuf ContactFilter when the target is a filter; empty for a list.
    filter BYTEA NOT NULL,
    action TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);

-- Runs of a workflow: queued, retried with backoff until they succeed.
CREATE TABLE workflow_runs (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    changed BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, id)
);
CREATE INDEX workflow_runs_due ON workflow_runs (state, next_attempt_at);
