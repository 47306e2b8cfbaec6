-- An account's events are delivered in order: the relay looks for an earlier event of the same
-- account still waiting for its retry.
CREATE INDEX outbox_account ON outbox (topic, account_id, seq);
