//! The account's usage state, versioned and published inside the transaction that changes it:
//! its update period, its tier and its marketing count. Notification evaluates thresholds
//! against each state in version order (1, 2, 3 ... per account, without gaps).

use super::NOTIFICATION_TOPIC;
use crate::convert::{billing_event, pb_date};
use crate::error::Result;
use chrono::{DateTime, NaiveDate, Utc};
use contactier_proto::notification::v1 as npb;
use contactier_runtime::outbox::EventTx;
use contactier_runtime::sql::{Sql, Tx};
use prost::Message;

/// A state to publish.
pub struct NewState<'a> {
    pub period_start: NaiveDate,
    pub tier: i64,
    pub count: i64,
    pub change: npb::UsageChange,
    /// For an upgrade: its id and the tier the count exceeded.
    pub upgrade: Option<(&'a str, i64)>,
}

const NEXT_VERSION: &str = "UPDATE subscriptions SET state_version = state_version + 1 WHERE account_id = \
     $1 RETURNING state_version";

/// Publishes the account's next usage state; answers its version.
pub async fn publish(tx: &mut impl Tx, account: &str, s: NewState<'_>, now: DateTime<Utc>) -> Result<i64> {
    let version: i64 = tx.scalar(Sql::new(NEXT_VERSION).bind(account)).await?;
    let (event_id, payload) = event(account, version, &s, now);
    tx.enqueue(&event_id, NOTIFICATION_TOPIC, account, &payload, now).await?;
    Ok(version)
}

/// The event of the account's usage state `version`: its id and payload.
pub fn event(account: &str, version: i64, s: &NewState<'_>, now: DateTime<Utc>) -> (String, Vec<u8>) {
    let state = npb::UsageState {
        version,
        period_start: Some(pb_date(s.period_start)),
        tier: s.tier,
        marketing_count: s.count,
        change: s.change as i32,
        upgrade_id: s.upgrade.map(|u| u.0.to_owned()).unwrap_or_default(),
        from_tier: s.upgrade.map_or(0, |u| u.1),
    };
    let ev = billing_event(account, now, npb::billing_event::Payload::State(state));
    (ev.event_id.clone(), ev.encode_to_vec())
}
