-- The keys by id alone go: 0008's keys by account and id hold the same, and nothing asks for a
-- conflict on them.
ALTER TABLE invoices DROP CONSTRAINT invoices_id_key;
ALTER TABLE upgrades DROP CONSTRAINT upgrades_id_key;
