-- The digest of the request a request id was first used for: a different request under the
-- same id is refused. Empty for answers kept before digests were.
ALTER TABLE status_requests ADD COLUMN digest TEXT NOT NULL DEFAULT '';
