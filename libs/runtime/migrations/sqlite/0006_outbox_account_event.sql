-- An event by its account and id, as the relay settles it. SQLite keeps its other keys: it is
-- one database, never distributed (0005 and 0008 are PostgreSQL's alone).
CREATE UNIQUE INDEX IF NOT EXISTS outbox_account_event ON outbox (account_id, event_id);
