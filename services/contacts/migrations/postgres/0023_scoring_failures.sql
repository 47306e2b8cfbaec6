-- An account whose scores could not be worked out: retried with backoff on its own while
-- every other account's scores go on, and listed to operators.
CREATE TABLE scoring_failures (
    account_id TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    PRIMARY KEY (account_id)
);
