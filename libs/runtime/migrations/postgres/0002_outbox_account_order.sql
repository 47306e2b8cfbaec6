-- no-transaction
-- An account's events are delivered in order: the relay looks for an earlier event of the same
-- account still waiting for its retry. Built without blocking the writers of the outbox.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_account ON outbox (topic, account_id, seq);
