//! Contact tiers of one edition: a base tier of `included` contacts, then steps of `step`.
//! The price book (configuration) supplies the numbers; this module only does the arithmetic.

use contactier_domain::{Money, MoneyError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierShape {
    /// Contacts in the base tier.
    pub included: i64,
    /// Size of every further step.
    pub step: i64,
    /// Largest tier sold.
    pub max_tier: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TierError {
    #[error("{0} marketing contacts exceed the largest tier {1}")]
    AboveLargest(i64, i64),
    #[error("{0} is not a tier of this edition")]
    NotATier(i64),
    #[error("invalid tier shape: {0}")]
    BadShape(&'static str),
    #[error(transparent)]
    Money(#[from] MoneyError),
}

impl TierShape {
    pub fn new(included: i64, step: i64, max_tier: i64) -> Result<Self, TierError> {
        if included <= 0 || step <= 0 {
            return Err(TierError::BadShape("included and step must be positive"));
        }
        if max_tier < included || (max_tier - included) % step != 0 {
            return Err(TierError::BadShape("the largest tier must be the base tier plus whole steps"));
        }
        Ok(Self { included, step, max_tier })
    }

    pub fn is_tier(&self, tier: i64) -> bool {
        tier >= self.included && tier <= self.max_tier && (tier - self.included) % self.step == 0
    }

    /// The smallest tier that holds `count` marketing contacts.
    pub fn smallest_holding(&self, count: i64) -> Result<i64, TierError> {
        if count <= self.included {
            return Ok(self.included);
        }
        // The ceiling of over / step, without the sum that overflows near i64::MAX.
        let over = count - self.included;
        let steps = over / self.step + i64::from(over % self.step != 0);
        steps
            .checked_mul(self.step)
            .and_then(|s| s.checked_add(self.included))
            .filter(|tier| *tier <= self.max_tier)
            .ok_or(TierError::AboveLargest(count, self.max_tier))
    }

    /// Steps above the base tier.
    pub fn steps(&self, tier: i64) -> Result<i64, TierError> {
        if !self.is_tier(tier) {
            return Err(TierError::NotATier(tier));
        }
        Ok((tier - self.included) / self.step)
    }

    /// Price per term of `tier`: the base price plus its steps.
    pub fn price(&self, tier: i64, base: Money, per_step: Money) -> Result<Money, TierError> {
        Ok(base.checked_add(per_step.checked_mul(self.steps(tier)?)?)?)
    }

    /// The tier a count moves `current` up to at once, if any: the smallest tier holding it, or
    /// the largest when none does (the count is billed there until sales agree a larger one).
    /// Never down: a lower count waits for a renewal.
    pub fn upgrade_to(&self, current: i64, count: i64) -> Option<i64> {
        let needed = self.smallest_holding(count).unwrap_or(self.max_tier);
        Some(needed).filter(|t| *t > current)
    }

    /// The tier of the term a renewal starts. Without a request the tier stays:
    /// there is no automatic downgrade. A requested lower tier applies if it holds `count`,
    /// otherwise the smallest tier that does; never above the current tier (counts above it
    /// upgrade through the usual path).
    pub fn renewal_tier(&self, current: i64, requested: Option<i64>, count: i64) -> i64 {
        let Some(requested) = requested.filter(|r| *r < current) else {
            return current;
        };
        let holding = self.smallest_holding(count).unwrap_or(self.max_tier);
        requested.max(holding).min(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contactier_domain::Currency;

    fn starter() -> TierShape {
        TierShape::new(1_000, 1_000, 1_000_000).unwrap()
    }
    fn professional() -> TierShape {
        TierShape::new(2_000, 5_000, 2_002_000).unwrap()
    }
    fn enterprise() -> TierShape {
        TierShape::new(10_000, 10_000, 10_000_000).unwrap()
    }

    #[test]
    fn a_count_above_the_tier_upgrades_at_once_and_never_down() {
        let p = professional();
        assert_eq!(p.upgrade_to(2_000, 2_000), None, "a full tier holds");
        assert_eq!(p.upgrade_to(2_000, 2_001), Some(7_000));
        assert_eq!(p.upgrade_to(2_000, 12_100), Some(17_000), "several steps at once");
        assert_eq!(p.upgrade_to(17_000, 100), None, "never down");
        assert_eq!(p.upgrade_to(2_000, 5_000_000), Some(2_002_000), "above the largest: the largest");
        assert_eq!(p.upgrade_to(2_002_000, 5_000_000), None);
    }

    #[test]
    fn the_smallest_tier_holding_a_count() {
        let table = [
            (starter(), 0, 1_000),
            (starter(), 1_000, 1_000),
            (starter(), 1_001, 2_000),
            (starter(), 5_500, 6_000),
            (professional(), 1_999, 2_000),
            (professional(), 2_000, 2_000),
            (professional(), 2_001, 7_000),
            (professional(), 7_000, 7_000),
            (professional(), 7_001, 12_000),
            (enterprise(), 10_001, 20_000),
            (enterprise(), 95_000, 100_000),
        ];
        for (shape, count, want) in table {
            assert_eq!(shape.smallest_holding(count).unwrap(), want, "{count} in {shape:?}");
        }
        assert_eq!(starter().smallest_holding(1_000_001), Err(TierError::AboveLargest(1_000_001, 1_000_000)));
        // Counts near the top of i64 are refused, not overflowed.
        let huge = TierShape::new(1, i64::MAX / 2, 1).unwrap();
        for count in [i64::MAX, i64::MAX - 1, i64::MAX / 2 + 2] {
            assert_eq!(huge.smallest_holding(count), Err(TierError::AboveLargest(count, 1)));
            assert_eq!(enterprise().smallest_holding(count), Err(TierError::AboveLargest(count, 10_000_000)));
        }
    }

    #[test]
    fn prices_add_a_step_price_per_step() {
        let eur = Currency::parse("EUR").unwrap();
        let (base, step) = (Money::new(80_000, eur), Money::new(25_000, eur));
        assert_eq!(professional().price(2_000, base, step).unwrap().minor, 80_000);
        assert_eq!(professional().price(12_000, base, step).unwrap().minor, 130_000);
        assert_eq!(professional().price(3_000, base, step), Err(TierError::NotATier(3_000)));
    }

    #[test]
    fn renewal_applies_a_requested_lower_tier_only_if_it_holds_the_count() {
        let p = professional();
        let table = [
            // (current, requested, count, renewal tier)
            (17_000, None, 100, 17_000),           // no request: no downgrade
            (17_000, Some(7_000), 6_900, 7_000),   // holds
            (17_000, Some(7_000), 7_000, 7_000),   // exactly full still holds
            (17_000, Some(7_000), 7_001, 12_000),  // the smallest that holds
            (17_000, Some(2_000), 16_500, 17_000), // nothing lower holds
            (17_000, Some(2_000), 90_000, 17_000), // above the current tier: upgrades handle it
            (17_000, Some(17_000), 10, 17_000),    // not lower: nothing to do
        ];
        for (current, requested, count, want) in table {
            assert_eq!(p.renewal_tier(current, requested, count), want, "{current} {requested:?} {count}");
        }
    }

    #[test]
    fn shapes_are_checked() {
        assert!(TierShape::new(0, 1, 1).is_err());
        assert!(TierShape::new(1_000, 1_000, 1_500).is_err());
        assert!(starter().is_tier(7_000) && !starter().is_tier(7_500) && !starter().is_tier(0));
    }
}
