-- Every change to what a usage read returns tells the other replicas' usage caches which
-- account to forget (channel and payload as libs/runtime's read_cache expects: schema:account).
CREATE FUNCTION usage_read_cache_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('contactier_read_cache', TG_TABLE_SCHEMA || ':' || COALESCE(NEW.account_id, OLD.account_id));
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER subscriptions_usage_cache AFTER INSERT OR UPDATE OR DELETE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION usage_read_cache_notify();
CREATE TRIGGER account_counts_usage_cache AFTER INSERT OR UPDATE OR DELETE ON account_counts
    FOR EACH ROW EXECUTE FUNCTION usage_read_cache_notify();
CREATE TRIGGER update_periods_usage_cache AFTER INSERT OR UPDATE OR DELETE ON update_periods
    FOR EACH ROW EXECUTE FUNCTION usage_read_cache_notify();
