//! Turning billing events into alerts: which fire, and what they say. No I/O; the store
//! supplies what has fired already and keeps the result.

use crate::thresholds::{Fire, State, Threshold};

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
    /// Threshold alerts: the count's share of the tier in basis points.
    pub used_basis_points: i64,
    /// Threshold alerts: the usage state that fired it.
    pub state_version: i64,
}

fn percent(t: Threshold) -> &'static str {
    match t {
        Threshold::P75 => "75 %",
        Threshold::P90 => "90 %",
        Threshold::P98 => "98 %",
        Threshold::Exceeded => "100 %",
    }
}

/// The count's share of `tier` in basis points (7500 = 75 %), rounded down.
pub fn basis_points(count: i64, tier: i64) -> i64 {
    if tier <= 0 {
        return 0;
    }
    i64::try_from(i128::from(count) * 10_000 / i128::from(tier)).unwrap_or(i64::MAX)
}

/// The alert of a threshold `state` fired: its count, tier, period and share of the tier.
pub fn threshold(fire: &Fire, state: &State) -> Draft {
    let (count, tier) = (state.count, fire.tier);
    let mut d = Draft {
        kind: Kind::Threshold(fire.threshold).as_str().into(),
        marketing_count: count,
        tier,
        period_start: state.period_start.clone(),
        used_basis_points: basis_points(count, tier),
        state_version: state.version,
        ..Draft::default()
    };
    d.message = match (fire.threshold, &fire.upgrade) {
        (Threshold::Exceeded, Some(up)) => {
            d.upgrade_id = up.id.clone();
            d.new_tier = state.tier;
            format!("{count} marketing contacts exceed your tier of {tier}; upgraded to {}.", state.tier)
        }
        (Threshold::Exceeded, None) => format!("{count} marketing contacts exceed your tier of {tier}."),
        (t, _) => format!(
            "{count} marketing contacts: {} of your tier of {tier} reached ({} % used) in the period from {}.",
            percent(t),
            d.used_basis_points / 100,
            state.period_start
        ),
    };
    d
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
    use crate::thresholds::{Armed, Upgrade, evaluate};
    use Threshold::*;

    #[test]
    fn an_exceeded_alert_names_its_upgrade_and_every_alert_its_state() {
        let state = State {
            version: 9,
            period_start: "2026-05-01".into(),
            tier: 7_000,
            count: 6_900,
            upgrade: Some(Upgrade { id: "up-1".into(), from_tier: 2_000 }),
        };
        let (fires, _) = evaluate(&Armed::default(), &state);
        let drafts: Vec<Draft> = fires.iter().map(|f| threshold(f, &state)).collect();
        let exceeded = drafts.iter().find(|d| d.kind == "tier_exceeded").unwrap();
        assert_eq!((exceeded.upgrade_id.as_str(), exceeded.new_tier, exceeded.tier), ("up-1", 7_000, 2_000));
        assert!(exceeded.message.contains("upgraded to 7000"), "{}", exceeded.message);
        let p98 = drafts.iter().find(|d| d.kind == "threshold_98" && d.tier == 7_000).unwrap();
        assert_eq!(
            (p98.used_basis_points, p98.state_version, p98.period_start.as_str()),
            (9_857, 9, "2026-05-01")
        );
        assert!(p98.upgrade_id.is_empty(), "only the exceeded alert names the upgrade");
        assert!(p98.message.contains("98 %") && p98.message.contains("98 % used"), "{}", p98.message);
        assert_eq!(fires.iter().filter(|f| f.threshold == P75).count(), 2, "75 % of both tiers");
    }

    #[test]
    fn kinds_round_trip_and_invoice_amounts_print_exactly() {
        for k in [Kind::Threshold(P75), Kind::Threshold(Exceeded), Kind::TierUpgraded, Kind::InvoiceIssued] {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        assert_eq!(invoice("inv", 7, 25_005, "EUR").message, "Invoice 7 issued: 250.05 EUR.");
        assert_eq!(basis_points(1_500, 2_000), 7_500);
        assert_eq!(basis_points(i64::MAX, 1), i64::MAX);
    }
}
