//! Between stored rows and the proto messages.

use crate::alerts::Kind;
use crate::error::{Error, Result};
use crate::store::{AlertRow, AttemptRow, DeliveryRow, RecipientRow};
use crate::thresholds::Threshold;
use contactier_proto::common::v1 as common;
use contactier_proto::notification::v1 as pb;
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
