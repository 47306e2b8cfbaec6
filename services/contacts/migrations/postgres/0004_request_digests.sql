-- The digest of the request a request id was first used for: a different request under the
-- same id is refused. Empty for answers kept before digests were.
ALTER TABLE request_answers ADD COLUMN digest TEXT NOT NULL DEFAULT '';
ALTER TABLE imports ADD COLUMN request_digest TEXT NOT NULL DEFAULT '';
