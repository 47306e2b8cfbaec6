-- no-transaction
-- An event is held while an earlier one of its account waits for a retry. The relay's check for
-- one looks at the account's waiting events through this index, not at every earlier event of
-- the account: behind a released backlog of one account (all due) that walk made each read
-- quadratic in the backlog. Built without blocking the outbox's writers.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_account_waiting ON outbox (account_id, topic, next_attempt_at, seq);
