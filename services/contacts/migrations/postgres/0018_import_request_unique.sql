-- no-transaction
-- One import per request id; built without blocking the imports' writers.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS imports_by_request ON imports (account_id, request_id)
    WHERE request_id <> '';
