-- The outbox's keys begin with the account. Nothing asks for a conflict on the keys dropped.
-- safe: the index was built in 0005; making it the key reads no rows
ALTER TABLE outbox DROP CONSTRAINT outbox_pkey, ADD CONSTRAINT outbox_pkey PRIMARY KEY USING INDEX outbox_account_seq;
ALTER TABLE outbox DROP CONSTRAINT outbox_event_id_key;
