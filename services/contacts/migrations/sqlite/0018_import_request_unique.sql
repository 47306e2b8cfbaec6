-- One import per request id.
CREATE UNIQUE INDEX IF NOT EXISTS imports_by_request ON imports (account_id, request_id)
    WHERE request_id <> '';
