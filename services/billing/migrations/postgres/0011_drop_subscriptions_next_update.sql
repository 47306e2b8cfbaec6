-- no-transaction
-- subscriptions_due (0010) serves every read this index served.
DROP INDEX CONCURRENTLY IF EXISTS subscriptions_next_update;
