-- The relay reads a topic's events due in `seq` order, a batch at a time: in this index's order
-- a read stops at its batch.
CREATE INDEX IF NOT EXISTS outbox_topic_seq ON outbox (topic, seq);
