-- A list's name compared without regard to case or Unicode form: the service writes the key
-- (NFC, lower case) with every name; rows from before get LOWER(name) here, and where two
-- already share a key the later ones keep their id appended, so the unique index can hold.
-- Rows written meanwhile by replicas of the version before have no key until renamed.
ALTER TABLE lists ADD COLUMN name_key TEXT;
-- safe: lists holds at most 10,000 rows an account, far fewer in all than contacts
UPDATE lists SET name_key = LOWER(name) WHERE name_key IS NULL;
-- safe: as above
UPDATE lists l SET name_key = l.name_key || '#' || l.id
WHERE EXISTS (
    SELECT 1 FROM lists o WHERE o.account_id = l.account_id AND o.name_key = l.name_key AND o.id < l.id
);
