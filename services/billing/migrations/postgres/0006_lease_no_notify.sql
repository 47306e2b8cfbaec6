-- Taking or extending an update date's lease (and recording a failed try) changes nothing a
-- usage read returns: such updates no longer notify the other replicas' caches. A notifying
-- transaction holds PostgreSQL's notify queue lock through its commit, so commits that notify
-- take turns; an instant shared by many accounts claimed each one through it.
DROP TRIGGER subscriptions_usage_cache ON subscriptions;
CREATE TRIGGER subscriptions_usage_cache AFTER INSERT OR DELETE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION usage_read_cache_notify();
CREATE TRIGGER subscriptions_usage_cache_update AFTER UPDATE OF edition, term, start_date, currency,
    subsidiary, tier, renewal_tier, marketing_contacts_enabled, next_update_date, next_update_at,
    state_version, period_start ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION usage_read_cache_notify();
