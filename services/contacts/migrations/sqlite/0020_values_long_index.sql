-- SQLite has no limit on an index entry: it keeps its one index over every value.
SELECT 1;
