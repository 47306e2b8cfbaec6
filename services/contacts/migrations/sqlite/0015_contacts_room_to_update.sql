-- PostgreSQL keeps room on each page of contacts for in-place updates; SQLite has no such setting.
SELECT 1;
