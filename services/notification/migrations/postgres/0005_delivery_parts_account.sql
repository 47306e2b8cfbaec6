-- A delivery's alerts and attempts carry its account, as every table does, so that they are
-- kept with their delivery when the tables distribute by account. Rows from before get it from
-- their delivery here; rows that replicas from before still write get it from the trigger,
-- until every replica writes it itself.
ALTER TABLE delivery_alerts ADD COLUMN account_id TEXT NOT NULL DEFAULT '';
ALTER TABLE delivery_attempts ADD COLUMN account_id TEXT NOT NULL DEFAULT '';
CREATE FUNCTION delivery_part_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.account_id = '' THEN
        NEW.account_id := COALESCE((SELECT d.account_id FROM deliveries d WHERE d.id = NEW.delivery_id), '');
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER delivery_alerts_account BEFORE INSERT ON delivery_alerts
    FOR EACH ROW EXECUTE FUNCTION delivery_part_account();
CREATE TRIGGER delivery_attempts_account BEFORE INSERT ON delivery_attempts
    FOR EACH ROW EXECUTE FUNCTION delivery_part_account();
-- safe: a delivery has a few alerts; the rows written are those from before, once
UPDATE delivery_alerts SET account_id = d.account_id FROM deliveries d
    WHERE d.id = delivery_alerts.delivery_id AND delivery_alerts.account_id = '';
-- safe: a delivery has at most its tries; the rows written are those from before, once
UPDATE delivery_attempts SET account_id = d.account_id FROM deliveries d
    WHERE d.id = delivery_attempts.delivery_id AND delivery_attempts.account_id = '';
