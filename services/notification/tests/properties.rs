//! Threshold rules over generated sequences of usage states: an alert never fires twice for one
//! tier and period, every threshold reached fires at the first state that reaches it, none fires
//! below its share, and the order in which the states arrive changes nothing.

use contactier_notification::thresholds::{Armed, Pending, State, Threshold};
use proptest::prelude::*;

/// A sequence of states: each moves the count, and now and then starts a new period or raises
/// the tier.
fn states() -> impl Strategy<Value = Vec<State>> {
    proptest::collection::vec((0i64..3_000, 0u8..10), 1..40).prop_map(|steps| {
        let (mut period, mut tier) = (0, 1_000);
        steps
            .into_iter()
            .enumerate()
            .map(|(i, (count, what))| {
                match what {
                    0 => period += 1,
                    1 => tier += 1_000,
                    _ => {}
                }
                State {
                    version: i as i64 + 1,
                    period_start: format!("p{period:04}"),
                    tier,
                    count,
                    upgrade: None,
                }
            })
            .collect()
    })
}

fn fired(arrivals: &[State]) -> Vec<(i64, i64, String, Threshold)> {
    let mut pending = Pending::default();
    let mut armed = Armed::default();
    let mut out = Vec::new();
    for s in arrivals {
        pending.states.insert(s.version, s.clone());
        let (done, next) = pending.evaluate(armed);
        armed = next;
        for (s, fires) in done {
            out.extend(fires.into_iter().map(|f| (s.version, f.tier, s.period_start.clone(), f.threshold)));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn each_threshold_fires_once_per_tier_and_period_when_first_reached(states in states()) {
        let fires = fired(&states);
        let mut seen = std::collections::HashSet::new();
        for (version, tier, period, t) in &fires {
            prop_assert!(seen.insert((*tier, period.clone(), *t)), "{t:?} fired twice in {tier}/{period}");
            let s = &states[*version as usize - 1];
            prop_assert!(t.reached(s.count, *tier), "{t:?} fired at {} of {tier}", s.count);
            // No earlier state of the same period and tier reached it.
            for earlier in &states[..*version as usize - 1] {
                let same_run = earlier.period_start == *period && earlier.tier == *tier
                    && states[earlier.version as usize..*version as usize - 1]
                        .iter()
                        .all(|between| between.period_start == *period && between.tier == *tier);
                prop_assert!(!(same_run && t.reached(earlier.count, *tier)), "{t:?} was reached first at {}", earlier.version);
            }
        }
        // Every threshold a state reached fired in its run of period and tier.
        for s in &states {
            for t in Threshold::ALL {
                if t.reached(s.count, s.tier) {
                    prop_assert!(seen.contains(&(s.tier, s.period_start.clone(), t)), "{t:?} of state {} never fired", s.version);
                }
            }
        }
    }

    #[test]
    fn any_order_of_arrival_with_replays_fires_the_same(states in states(), seed in any::<u64>()) {
        let mut shuffled = states.clone();
        shuffled.extend(states.iter().take(seed as usize % (states.len() + 1)).cloned());
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(fired(&shuffled), fired(&states));
    }
}
