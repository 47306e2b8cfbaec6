-- A list's name compared without regard to case or Unicode form: the service writes the key
-- (NFC, lower case) with every name; rows from before get LOWER(name) here, and where two
-- already share a key the later ones keep their id appended, so the unique index can hold.
ALTER TABLE lists ADD COLUMN name_key TEXT;
UPDATE lists SET name_key = LOWER(name) WHERE name_key IS NULL;
UPDATE lists SET name_key = name_key || '#' || id
WHERE EXISTS (
    SELECT 1 FROM lists o WHERE o.account_id = lists.account_id AND o.name_key = lists.name_key AND o.id < lists.id
);
