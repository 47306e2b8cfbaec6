-- A background item that failed is recorded on the item itself, so it is retried with backoff
-- on its own while every other account's work goes on, and operators can list it.

-- An upgrade day whose invoice could not be issued yet.
CREATE TABLE invoice_failures (
    account_id TEXT NOT NULL,
    effective_date TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, effective_date)
);

-- Why the account's update date failed last (empty when it has not).
ALTER TABLE subscriptions ADD COLUMN update_error TEXT NOT NULL DEFAULT '';
