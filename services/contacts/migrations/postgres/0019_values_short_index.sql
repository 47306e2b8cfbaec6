-- no-transaction
-- Values past PostgreSQL's b-tree entry limit (about 2.7 kB) could not be written at all while
-- every value was indexed: the index by value holds values of up to 1,000 bytes, nearly all of
-- them, and 0020 the longer ones by name (see src/value_index.rs).
CREATE INDEX CONCURRENTLY IF NOT EXISTS contact_values_by_short_value ON contact_values (account_id, name, value)
    WHERE octet_length(value) <= 1000;
