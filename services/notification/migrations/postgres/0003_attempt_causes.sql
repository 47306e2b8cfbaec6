-- Why an attempt got no answer, for operators: the tenant sees the same words for every way of
-- not getting one.
ALTER TABLE delivery_attempts ADD COLUMN cause TEXT NOT NULL DEFAULT '';
