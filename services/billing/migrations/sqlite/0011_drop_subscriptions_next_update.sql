-- subscriptions_due (0010) serves every read this index served.
DROP INDEX IF EXISTS subscriptions_next_update;
