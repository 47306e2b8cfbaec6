-- An account whose count moved in a bulk change that has not finished: its count is announced to
-- billing once, when the change ends, so nothing downstream sees a count from its middle. Should
-- the change never end (its caller gone), the count is announced after a minute all the same.
CREATE TABLE count_holds (
    account_id TEXT PRIMARY KEY,
    since BIGINT NOT NULL
);
