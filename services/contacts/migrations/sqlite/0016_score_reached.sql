-- Whether a contact's score reached the account's MQL threshold when last worked out, so a
-- score promotes only when it comes to reach it (a person's move back from MQL stands while
-- the score stays over). NULL on rows from before: read from the stored score then.
ALTER TABLE contacts ADD COLUMN score_reached BOOLEAN;
