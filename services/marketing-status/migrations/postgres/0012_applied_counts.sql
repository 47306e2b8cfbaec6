-- A date's answer is kept with it: asked again (by a caller that died before it recorded the
-- first answer), the date answers the count that held just after it was applied, not the count
-- of the moment it is asked, which later changes would have moved. NULL for dates applied
-- before these columns: those answer the count of the moment, as they did.
ALTER TABLE applied_update_dates ADD COLUMN marketing BIGINT;
ALTER TABLE applied_update_dates ADD COLUMN pending BIGINT;
ALTER TABLE applied_update_dates ADD COLUMN non_marketing BIGINT;
ALTER TABLE applied_update_dates ADD COLUMN version BIGINT;
ALTER TABLE applied_update_dates ADD COLUMN counted_at BIGINT;
