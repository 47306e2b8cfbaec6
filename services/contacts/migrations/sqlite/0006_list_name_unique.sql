-- One list per name key in an account, also under concurrent creates and renames.
CREATE UNIQUE INDEX IF NOT EXISTS lists_name_key ON lists (account_id, name_key);
