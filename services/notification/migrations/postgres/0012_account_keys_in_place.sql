-- The keys built in 0006 and 0007 become the tables' keys; the keys by id alone go (the
-- account's keys hold the same). Nothing asks for a conflict on them: an alert's insert takes any.
-- The delivery's key by id stays while 0005's trigger looks deliveries up by id alone.
-- safe: the index was built in 0006; making it the key reads no rows
ALTER TABLE delivery_alerts DROP CONSTRAINT delivery_alerts_pkey, ADD CONSTRAINT delivery_alerts_pkey PRIMARY KEY USING INDEX delivery_alerts_key;
-- safe: the index was built in 0007; making it the key reads no rows
ALTER TABLE delivery_attempts DROP CONSTRAINT delivery_attempts_pkey, ADD CONSTRAINT delivery_attempts_pkey PRIMARY KEY USING INDEX delivery_attempts_key;
ALTER TABLE alerts DROP CONSTRAINT alerts_id_key;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_alert_id_recipient_id_key;
ALTER TABLE recipients DROP CONSTRAINT recipients_id_key;
