//! Turning billing events into alerts: which fire, and what they say. No I/O; the store
//! supplies what has fired already and keeps the result.

use crate::thresholds::{Threshold, to_fire};

/// Kinds of alert, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Threshold(Threshold),
    TierUpgraded,
    InvoiceIssued,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Threshold(Threshold::P75) => "threshold_75",
            Kind::Threshold(Threshold::P90) => "threshold_90",
            Kind::Threshold(Threshold::P98) => "threshold_98",
            Kind::Threshold(Threshold::Exceeded) => "tier_exceeded",
            Kind::TierUpgraded => "tier_upgraded",
            Kind::InvoiceIssued => "invoice_issued",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "threshold_75" => Kind::Threshold(Threshold::P75),
            "threshold_90" => Kind::Threshold(Threshold::P90),
            "threshold_98" => Kind::Threshold(Threshold::P98),
            "tier_exceeded" => Kind::Threshold(Threshold::Exceeded),
            "tier_upgraded" => Kind::TierUpgraded,
            "invoice_issued" => Kind::InvoiceIssued,
            _ => return None,
        })
    }
}

/// What an alert says; stored as is, with its id and sequence around it.
#[derive(Clone, Debug, PartialEq, Eq, Default, sqlx::FromRow, serde::Serialize)]
pub struct Draft {
    /// A [`Kind`], by its stored name.
    pub kind: String,
    pub marketing_count: i64,
    pub tier: i64,
    pub period_start: String,
    pub upgrade_id: String,
    pub new_tier: i64,
    pub invoice_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub message: String,
}

/// A usage observation from billing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub marketing_count: i64,
    pub tier: i64,
    pub period_start: String,
    /// The upgrade this count caused, with the tier it moved to.
    pub upgrade: Option<(String, i64)>,
}

fn percent(t: Threshold) -> &'static str {
    match t {
        Threshold::P75 => "75 %",
        Threshold::P90 => "90 %",
        Threshold::P98 => "98 %",
        Threshold::Exceeded => "100 %",
    }
}

fn threshold_draft(t: Threshold, usage: &Usage, tier: i64) -> Draft {
    let count = usage.marketing_count;
    let mut d = Draft {
        kind: Kind::Threshold(t).as_str().into(),
        marketing_count: count,
        tier,
        period_start: usage.period_start.clone(),
        ..Draft::default()
    };
    d.message = match (t, &usage.upgrade) {
        (Threshold::Exceeded, Some((id, new_tier))) if tier == usage.tier => {
            d.upgrade_id = id.clone();
            d.new_tier = *new_tier;
            format!("{count} marketing contacts exceed your tier of {tier}; upgraded to {new_tier}.")
        }
        (Threshold::Exceeded, _) => format!("{count} marketing contacts exceed your tier of {tier}."),
        _ => format!("{count} marketing contacts: {} of your tier of {tier} reached.", percent(t)),
    };
    d
}

/// The alerts a usage observation fires: each threshold of the observed tier reached and not
/// fired yet in this period; and, when the count caused an upgrade, the thresholds of the new
/// tier it already reaches. `fired(tier)` answers what has fired for a tier in this period.
pub fn usage_alerts(usage: &Usage, fired: impl Fn(i64) -> Vec<Threshold>) -> Vec<(i64, Threshold, Draft)> {
    let mut tiers = vec![usage.tier];
    if let Some((_, new_tier)) = &usage.upgrade {
        tiers.push(*new_tier);
    }
    let mut out = Vec::new();
    for tier in tiers {
        for t in to_fire(usage.marketing_count, tier, &fired(tier)) {
            out.push((tier, t, threshold_draft(t, usage, tier)));
        }
    }
    out
}

pub fn upgraded(upgrade_id: &str, from_tier: i64, to_tier: i64, count: i64, period_start: &str) -> Draft {
    Draft {
        kind: Kind::TierUpgraded.as_str().into(),
        marketing_count: count,
        tier: from_tier,
        new_tier: to_tier,
        upgrade_id: upgrade_id.to_owned(),
        period_start: period_start.to_owned(),
        message: format!(
            "Your tier was upgraded from {from_tier} to {to_tier} marketing contacts ({count} marketing contacts)."
        ),
        ..Draft::default()
    }
}

pub fn invoice(invoice_id: &str, number: i64, amount_minor: i64, currency: &str) -> Draft {
    let abs = amount_minor.unsigned_abs();
    let sign = if amount_minor < 0 { "-" } else { "" };
    Draft {
        kind: Kind::InvoiceIssued.as_str().into(),
        invoice_id: invoice_id.to_owned(),
        amount_minor,
        currency: currency.to_owned(),
        message: format!("Invoice {number} issued: {sign}{}.{:02} {currency}.", abs / 100, abs % 100),
        ..Draft::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Threshold::*;

    fn usage(count: i64, tier: i64, upgrade: Option<(&str, i64)>) -> Usage {
        Usage {
            marketing_count: count,
            tier,
            period_start: "2026-05-01".into(),
            upgrade: upgrade.map(|(id, t)| (id.to_owned(), t)),
        }
    }

    #[test]
    fn an_exceeding_count_names_its_upgrade_and_checks_the_new_tier() {
        let u = usage(6_900, 2_000, Some(("up-1", 7_000)));
        let got = usage_alerts(&u, |_| vec![]);
        let fired: Vec<(i64, Threshold)> = got.iter().map(|(tier, t, _)| (*tier, *t)).collect();
        // 6,900 is 98.57 % of the new tier of 7,000: its 75, 90 and 98 % alerts fire at once.
        assert_eq!(
            fired,
            [
                (2_000, P75),
                (2_000, P90),
                (2_000, P98),
                (2_000, Exceeded),
                (7_000, P75),
                (7_000, P90),
                (7_000, P98)
            ]
        );
        let exceeded = &got[3].2;
        assert_eq!(exceeded.upgrade_id, "up-1");
        assert_eq!(exceeded.new_tier, 7_000);
        assert!(exceeded.message.contains("upgraded to 7000"));
        assert!(got[4].2.upgrade_id.is_empty(), "only the exceeded alert names the upgrade");
    }

    #[test]
    fn what_has_fired_does_not_fire_again() {
        let u = usage(1_900, 2_000, None);
        let got = usage_alerts(&u, |_| vec![P75]);
        assert_eq!(got.iter().map(|(_, t, _)| *t).collect::<Vec<_>>(), [P90]);
        assert!(got[0].2.message.contains("90 %"));
    }

    #[test]
    fn kinds_round_trip_and_invoice_amounts_print_exactly() {
        for k in [Kind::Threshold(P75), Kind::Threshold(Exceeded), Kind::TierUpgraded, Kind::InvoiceIssued] {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(invoice("inv", 7, 25_005, "EUR").message, "Invoice 7 issued: 250.05 EUR.");
    }
}
