-- The token of a running import's owner, new with each start and takeover: a batch goes in
-- only while the record still holds its owner's token.
ALTER TABLE imports ADD COLUMN owner TEXT NOT NULL DEFAULT '';
