//! Between stored rows and the proto messages.

use crate::alerts::Kind;
use crate::error::{Error, Result};
use crate::store::{AlertRow, AttemptRow, DeliveryRow, Event, RecipientRow};
use crate::thresholds::{State, Threshold, Upgrade};
use contactier_proto::common::v1 as common;
use contactier_proto::notification::v1 as pb;
use contactier_proto::notification::v1::billing_event::Payload;
use contactier_runtime::convert::{pb_date, timestamp_micros};

pub fn date_string(d: Option<&common::Date>, field: &'static str) -> Result<String> {
    let d = contactier_runtime::convert::date(d).map_err(|r| Error::invalid(field, r))?;
    Ok(d.format("%Y-%m-%d").to_string())
}

fn date(s: &str) -> Option<common::Date> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().map(pb_date)
}

fn kind(s: &str) -> pb::AlertKind {
    match Kind::parse(s) {
        Some(Kind::Threshold(Threshold::P75)) => pb::AlertKind::Threshold75,
        Some(Kind::Threshold(Threshold::P90)) => pb::AlertKind::Threshold90,
        Some(Kind::Threshold(Threshold::P98)) => pb::AlertKind::Threshold98,
        Some(Kind::Threshold(Threshold::Exceeded)) => pb::AlertKind::TierExceeded,
        Some(Kind::TierUpgraded) => pb::AlertKind::TierUpgraded,
        Some(Kind::InvoiceIssued) => pb::AlertKind::InvoiceIssued,
        None => pb::AlertKind::Unspecified,
    }
}

pub fn alert(r: AlertRow) -> pb::Alert {
    let a = r.alert;
    pb::Alert {
        id: r.id,
        sequence: r.sequence,
        kind: kind(&a.kind) as i32,
        marketing_count: a.marketing_count,
        tier: a.tier,
        period_start: date(&a.period_start),
        upgrade_id: a.upgrade_id,
        new_tier: a.new_tier,
        invoice_id: a.invoice_id,
        amount: (!a.currency.is_empty())
            .then_some(common::Money { amount_minor: a.amount_minor, currency: a.currency }),
        created_at: timestamp_micros(r.created_at),
        message: a.message,
        used_basis_points: a.used_basis_points,
        state_version: a.state_version,
    }
}

/// A recipient; the webhook secret only when it is being handed out at creation.
pub fn recipient(r: RecipientRow, with_secret: bool) -> pb::Recipient {
    let target = match r.kind.as_str() {
        "webhook" => Some(pb::recipient::Target::Webhook(pb::WebhookTarget {
            url: r.address,
            secret: if with_secret { r.secret } else { String::new() },
        })),
        _ => Some(pb::recipient::Target::Email(pb::EmailTarget { address: r.address })),
    };
    pb::Recipient { id: r.id, target, created_at: timestamp_micros(r.created_at) }
}

pub fn delivery(d: DeliveryRow, attempts: Vec<AttemptRow>, alert_ids: Vec<String>) -> pb::Delivery {
    let state = match d.state.as_str() {
        crate::store::PENDING => pb::DeliveryState::Pending,
        crate::store::DELIVERED => pb::DeliveryState::Delivered,
        crate::store::DEAD_LETTERED => pb::DeliveryState::DeadLettered,
        _ => pb::DeliveryState::Unspecified,
    };
    pb::Delivery {
        next_attempt_at: (state == pb::DeliveryState::Pending)
            .then(|| timestamp_micros(d.next_attempt_at))
            .flatten(),
        id: d.id,
        alert_id: d.alert_id,
        recipient_id: d.recipient_id,
        alert_ids,
        state: state as i32,
        attempts: attempts
            .into_iter()
            .map(|a| pb::DeliveryAttempt {
                at: timestamp_micros(a.at),
                status_code: a.status_code,
                error: a.error,
            })
            .collect(),
    }
}

fn non_negative(v: i64, field: &'static str) -> Result<i64> {
    if v < 0 { Err(Error::invalid(field, "must not be negative")) } else { Ok(v) }
}

fn required(v: String, field: &'static str) -> Result<String> {
    if v.is_empty() { Err(Error::invalid(field, "required")) } else { Ok(v) }
}

/// A billing event checked: a bad one refuses the whole batch before anything is applied,
/// naming its field within `events`. None for an event of a kind this service no longer takes
/// (acknowledged, skipped).
pub fn billing_event(e: pb::BillingEvent) -> Result<(String, String, Option<Event>)> {
    let event_id = required(e.event_id, "events.event_id")?;
    let account = required(e.account_id, "events.account_id")?;
    let Some(payload) = e.payload else {
        return Ok((event_id, account, None));
    };
    let event = match payload {
        Payload::State(s) => {
            if s.version <= 0 {
                return Err(Error::invalid("events.state.version", "must be positive"));
            }
            if s.tier <= 0 {
                return Err(Error::invalid("events.state.tier", "must be positive"));
            }
            let upgrade = if s.upgrade_id.is_empty() {
                None
            } else if s.from_tier <= 0 || s.from_tier >= s.tier {
                return Err(Error::invalid("events.state.from_tier", "an upgrade raises the tier"));
            } else {
                Some(Upgrade { id: s.upgrade_id, from_tier: s.from_tier })
            };
            Event::State(State {
                version: s.version,
                period_start: date_string(s.period_start.as_ref(), "events.state.period_start")?,
                tier: s.tier,
                count: non_negative(s.marketing_count, "events.state.marketing_count")?,
                upgrade,
            })
        }
        Payload::Upgraded(u) => {
            if u.to_tier <= u.from_tier {
                return Err(Error::invalid("events.upgraded.to_tier", "an upgrade must raise the tier"));
            }
            Event::Upgraded {
                upgrade_id: required(u.upgrade_id, "events.upgraded.upgrade_id")?,
                from_tier: non_negative(u.from_tier, "events.upgraded.from_tier")?,
                to_tier: u.to_tier,
                marketing_count: non_negative(u.marketing_count, "events.upgraded.marketing_count")?,
                period_start: date_string(u.period_start.as_ref(), "events.upgraded.period_start")?,
            }
        }
        Payload::Invoice(i) => {
            let total = i.total.ok_or_else(|| Error::invalid("events.invoice.total", "required"))?;
            contactier_domain::Currency::parse(&total.currency)
                .map_err(|e| Error::invalid("events.invoice.total.currency", e.to_string()))?;
            Event::Invoice {
                invoice_id: required(i.invoice_id, "events.invoice.invoice_id")?,
                number: i.number,
                amount_minor: total.amount_minor,
                currency: total.currency,
            }
        }
    };
    Ok((event_id, account, Some(event)))
}
