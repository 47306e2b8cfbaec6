-- no-transaction
-- Values longer than 1,000 bytes, found by account and property name.
CREATE INDEX CONCURRENTLY IF NOT EXISTS contact_values_long ON contact_values (account_id, name)
    WHERE octet_length(value) > 1000;
