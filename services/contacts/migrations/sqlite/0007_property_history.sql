-- Every change of a property value (and of the email): the value after it ('' when cleared),
-- where it came from, who made it and when. Written in the transaction that changes the value.
CREATE TABLE property_history (
    account_id TEXT NOT NULL,
    contact_id TEXT NOT NULL,
    name TEXT NOT NULL,
    -- Time-ordered: a contact's changes of one property page newest first by id.
    id TEXT NOT NULL,
    value TEXT NOT NULL,
    source_type TEXT NOT NULL,
    source_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    changed_at BIGINT NOT NULL,
    PRIMARY KEY (account_id, contact_id, name, id)
);
-- Reports over one property across an account (lifecycle stage by day).
CREATE INDEX property_history_by_name ON property_history (account_id, name, changed_at);
