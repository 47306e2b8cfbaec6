-- An event by its account and id, as the relay and the inbox look it up. SQLite keeps its
-- other keys: it is one database, never distributed.
CREATE UNIQUE INDEX IF NOT EXISTS outbox_account_event ON outbox (account_id, event_id);
CREATE UNIQUE INDEX IF NOT EXISTS inbox_account_event ON inbox (account_id, event_id);
