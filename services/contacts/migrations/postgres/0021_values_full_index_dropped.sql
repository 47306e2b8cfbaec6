-- no-transaction
-- Replaced by 0019 and 0020; while it stands no value over about 2.7 kB can be written. Replicas
-- of the version before search values through the primary key until they are replaced.
DROP INDEX CONCURRENTLY IF EXISTS contact_values_by_value;
