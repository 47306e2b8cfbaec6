//! Which usage alerts fire. Pure: storage keeps what fired per (account, tier, update period)
//! under a unique key, so each alert fires exactly once there, and a new tier or a new period
//! starts with nothing fired (re-armed).

/// A usage alert of one tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Threshold {
    /// At or above 75 % of the tier.
    P75,
    P90,
    P98,
    /// Above the tier: the count no longer fits, an upgrade follows.
    Exceeded,
}

impl Threshold {
    pub const ALL: [Threshold; 4] = [Threshold::P75, Threshold::P90, Threshold::P98, Threshold::Exceeded];

    /// Whether `count` marketing contacts reach this threshold of `tier`. Integer arithmetic:
    /// 75 % of 1,001 is 750.75, so 750 is below it and 751 reaches it.
    pub fn reached(self, count: i64, tier: i64) -> bool {
        let (count, tier) = (i128::from(count), i128::from(tier));
        match self {
            Threshold::P75 => count * 100 >= tier * 75,
            Threshold::P90 => count * 100 >= tier * 90,
            Threshold::P98 => count * 100 >= tier * 98,
            Threshold::Exceeded => count > tier,
        }
    }
}

/// The alerts to fire now for `count` against `tier`, given those already fired for this tier
/// and period: every threshold reached and not yet fired, lowest first. A jump past several
/// fires each of them.
pub fn to_fire(count: i64, tier: i64, already_fired: &[Threshold]) -> Vec<Threshold> {
    if tier <= 0 {
        return Vec::new();
    }
    Threshold::ALL.into_iter().filter(|t| t.reached(count, tier) && !already_fired.contains(t)).collect()
}

#[cfg(test)]
mod tests {
    use super::Threshold::*;
    use super::*;

    #[test]
    fn thresholds_fire_at_or_above_their_share() {
        // (count, tier, already fired, expected)
        let table: &[(i64, i64, &[Threshold], &[Threshold])] = &[
            (0, 1_000, &[], &[]),
            (749, 1_000, &[], &[]),
            (750, 1_000, &[], &[P75]),
            (899, 1_000, &[P75], &[]),
            (900, 1_000, &[P75], &[P90]),
            (980, 1_000, &[P75, P90], &[P98]),
            (1_000, 1_000, &[P75, P90, P98], &[]),
            (1_001, 1_000, &[P75, P90, P98], &[Exceeded]),
            // A jump sends every threshold passed, never only the highest.
            (990, 1_000, &[], &[P75, P90, P98]),
            (5_000, 1_000, &[], &[P75, P90, P98, Exceeded]),
            (950, 1_000, &[P75], &[P90]),
            // Fired ones stay fired while the count moves down and up again.
            (800, 1_000, &[P75, P90], &[]),
            (950, 1_000, &[P75, P90], &[]),
            // Shares that are not whole contacts: 75 % of 1,001 is 750.75.
            (750, 1_001, &[], &[]),
            (751, 1_001, &[], &[P75]),
            // 98 % of 7,000 is 6,860.
            (6_859, 7_000, &[P75, P90], &[]),
            (6_860, 7_000, &[P75, P90], &[P98]),
            (10, 0, &[], &[]),
        ];
        for (count, tier, fired, want) in table {
            assert_eq!(to_fire(*count, *tier, fired), *want, "{count}/{tier} with {fired:?}");
        }
    }

    #[test]
    fn a_new_tier_or_period_re_arms_every_threshold() {
        // Fired in tier 1,000; after an upgrade to 2,000 nothing has fired for that tier yet.
        let fired_old_tier = to_fire(1_001, 1_000, &[]);
        assert_eq!(fired_old_tier, [P75, P90, P98, Exceeded]);
        assert_eq!(to_fire(1_001, 2_000, &[]), [] as [Threshold; 0], "50 % of the new tier");
        assert_eq!(to_fire(1_500, 2_000, &[]), [P75]);
    }

    #[test]
    fn each_threshold_fires_once_however_the_count_moves() {
        let tier = 2_000;
        let mut fired = Vec::new();
        let mut fires = 0;
        for count in [1_000, 1_600, 1_400, 1_700, 1_900, 1_800, 1_990, 2_000, 1_500, 2_001, 2_500] {
            let now = to_fire(count, tier, &fired);
            fires += now.len();
            fired.extend(now);
        }
        assert_eq!(fires, 4);
        fired.sort();
        assert_eq!(fired, Threshold::ALL);
    }
}
