-- The digest of the request a request id was first used for: a different request under the
-- same id is refused. Empty for answers kept before digests were.
ALTER TABLE request_answers ADD COLUMN digest TEXT NOT NULL DEFAULT '';
ALTER TABLE imports ADD COLUMN request_digest TEXT NOT NULL DEFAULT '';
-- The file an import's request id stands for: a digest of its bytes up to the last saved row
-- (a retry taking the import up again must send the same ones) and of the whole file once done.
ALTER TABLE imports ADD COLUMN prefix_digest TEXT NOT NULL DEFAULT '';
ALTER TABLE imports ADD COLUMN file_digest TEXT NOT NULL DEFAULT '';
