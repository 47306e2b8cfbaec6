-- One import per request id (the unique index comes next): two calls starting the same import
-- at once each found none and each made one. Twins made so before keep their rows; the later
-- ones give up the request id.
UPDATE imports SET request_id = '' WHERE request_id <> '' AND EXISTS (
    SELECT 1 FROM imports e WHERE e.account_id = imports.account_id AND e.request_id = imports.request_id
    AND (e.started_at < imports.started_at OR (e.started_at = imports.started_at AND e.id < imports.id)));
