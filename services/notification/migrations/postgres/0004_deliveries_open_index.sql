-- no-transaction
-- Open digests of a recipient, found as alerts are delivered. Built without blocking the
-- replicas that write deliveries meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS deliveries_open ON deliveries (account_id, recipient_id, open_until);
