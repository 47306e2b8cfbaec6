-- Only number properties have a numeric value; text values no longer add an index entry each.
-- Every numeric filter (=, <, >, ...) implies num IS NOT NULL, so it still uses the index.
DROP INDEX contact_values_by_num;
CREATE INDEX contact_values_by_num ON contact_values (account_id, name, num) WHERE num IS NOT NULL;
