-- The number of the import file's row that created a contact (0: not an import's): a resumed
-- import tells the contacts its rows wrote before the cut from those of earlier rows.
ALTER TABLE contacts ADD COLUMN source_row BIGINT NOT NULL DEFAULT 0;
