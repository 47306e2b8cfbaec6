-- no-transaction
-- ListStatusChanges pages an account's trail newest first: read from this index at the page's
-- position, a page costs a page of entries however long the trail. Without it, each page read
-- and sorted every entry of the account (two million entries: seconds a page).
CREATE INDEX CONCURRENTLY IF NOT EXISTS status_changes_by_time ON status_changes (account_id, requested_at, id);
