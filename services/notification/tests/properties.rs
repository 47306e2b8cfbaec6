//! Threshold rules over generated count sequences: an alert never fires twice for one tier and
//! period, every threshold reached fires, and none fires below its share.

use contactier_notification::thresholds::{Threshold, to_fire};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn each_threshold_fires_once_per_tier_when_first_reached(
        tier in 1i64..1_000_000,
        counts in proptest::collection::vec(0i64..2_000_000, 1..50),
    ) {
        let mut fired: Vec<Threshold> = Vec::new();
        let mut high = 0;
        for c in counts {
            let now = to_fire(c, tier, &fired);
            for t in &now {
                prop_assert!(!fired.contains(t), "{t:?} fired twice");
                prop_assert!(t.reached(c, tier), "{t:?} fired at {c} of {tier}");
            }
            fired.extend(now);
            high = high.max(c);
            // Every threshold the highest count so far reached has fired.
            for t in Threshold::ALL {
                prop_assert_eq!(t.reached(high, tier), fired.contains(&t));
            }
        }
    }
}
