-- Takes the table's lock for a moment, as a key's swap does.
ALTER TABLE widgets ADD COLUMN note TEXT;
