-- no-transaction
-- The relay reads a topic's events due in `seq` order, a batch at a time: in this index's order
-- a read stops at its batch, where the due index (in time order) had every read sort the whole
-- backlog. Built without blocking the outbox's writers.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_topic_seq ON outbox (topic, seq);
