-- Room on every page for a contact's row to be rewritten in place: its visits and values
-- change often and touch no indexed column, so with room beside the old row such an update
-- writes no index entries (a heap-only update) instead of one in each of the table's indexes.
-- Pages written from now on keep the room; existing ones gain it as they are rewritten.
ALTER TABLE contacts SET (fillfactor = 85);
