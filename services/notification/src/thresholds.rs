//! Which usage alerts fire. Pure. Billing publishes the account's usage state (update period,
//! tier, marketing count) with a version, whenever any part of it changes; each state is
//! evaluated once, in version order, against what the states before it reached in the same
//! period and tier. A threshold fires at the first state at or above it in its period and tier;
//! a new period or a new tier re-arms every threshold; a jump past several fires each of them.
//! The same states give the same alerts however they arrive: [`Pending`] puts them in order.

use std::collections::BTreeMap;

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

/// The thresholds `count` reaches in `tier` that `before` (the highest count reached earlier in
/// the same period and tier) did not: each lowest first.
fn newly_reached(count: i64, before: i64, tier: i64) -> Vec<Threshold> {
    if tier <= 0 {
        return Vec::new();
    }
    Threshold::ALL.into_iter().filter(|t| t.reached(count, tier) && !t.reached(before, tier)).collect()
}

/// An upgrade a state reports: the count exceeded `from_tier`, and the tier was raised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub id: String,
    pub from_tier: i64,
}

/// One usage state of an account, as billing published it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub version: i64,
    /// YYYY-MM-DD.
    pub period_start: String,
    pub tier: i64,
    pub count: i64,
    pub upgrade: Option<Upgrade>,
}

/// What evaluation keeps of the states evaluated so far: the last one's period and tier, and
/// the highest count reached in them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Armed {
    pub version: i64,
    pub period_start: String,
    pub tier: i64,
    pub high: i64,
}

/// A threshold that fires, of the tier it fires for; the exceeded alert of an upgrade names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fire {
    pub tier: i64,
    pub threshold: Threshold,
    pub upgrade: Option<Upgrade>,
}

/// The alerts `state` fires after `armed`, and what evaluation keeps after it.
pub fn evaluate(armed: &Armed, state: &State) -> (Vec<Fire>, Armed) {
    let before = |tier: i64| {
        if armed.period_start == state.period_start && armed.tier == tier { armed.high } else { 0 }
    };
    let mut fires = Vec::new();
    if let Some(up) = &state.upgrade {
        // The count went past the old tier, whose thresholds it reaches fire with it; the new
        // tier starts with nothing reached.
        for t in newly_reached(state.count, before(up.from_tier), up.from_tier) {
            let upgrade = (t == Threshold::Exceeded).then(|| up.clone());
            fires.push(Fire { tier: up.from_tier, threshold: t, upgrade });
        }
    }
    let high = if state.upgrade.is_some() { 0 } else { before(state.tier) };
    for t in newly_reached(state.count, high, state.tier) {
        fires.push(Fire { tier: state.tier, threshold: t, upgrade: None });
    }
    let next = Armed {
        version: state.version,
        period_start: state.period_start.clone(),
        tier: state.tier,
        high: high.max(state.count),
    };
    (fires, next)
}

/// States received and not yet evaluated, by version. Only the states that follow on from the
/// last one evaluated without a gap are evaluated; a later one waits for those before it.
#[derive(Clone, Debug, Default)]
pub struct Pending {
    pub states: BTreeMap<i64, State>,
}

impl Pending {
    /// Evaluates the states that follow `armed` in order; answers each with what it fires, and
    /// what evaluation keeps after the last. States at or before `armed` are replays: dropped.
    pub fn evaluate(&mut self, mut armed: Armed) -> (Vec<(State, Vec<Fire>)>, Armed) {
        self.states.retain(|v, _| *v > armed.version);
        let mut out = Vec::new();
        while let Some(state) = self.states.remove(&(armed.version + 1)) {
            let (fires, next) = evaluate(&armed, &state);
            out.push((state, fires));
            armed = next;
        }
        (out, armed)
    }
}

#[cfg(test)]
mod tests {
    use super::Threshold::*;
    use super::*;

    fn state(version: i64, period: &str, tier: i64, count: i64) -> State {
        State { version, period_start: period.into(), tier, count, upgrade: None }
    }

    fn upgraded(version: i64, period: &str, from: i64, to: i64, count: i64) -> State {
        State {
            upgrade: Some(Upgrade { id: format!("up-{version}"), from_tier: from }),
            ..state(version, period, to, count)
        }
    }

    /// Every state of `arrivals` received in that order (replays included), evaluated as the
    /// store does: the fires, as (version, tier, threshold).
    fn run(arrivals: &[State]) -> Vec<(i64, i64, Threshold)> {
        let mut pending = Pending::default();
        let mut armed = Armed::default();
        let mut fired = Vec::new();
        for s in arrivals {
            pending.states.insert(s.version, s.clone());
            let (done, next) = pending.evaluate(armed);
            armed = next;
            for (s, fires) in done {
                fired.extend(fires.into_iter().map(|f| (s.version, f.tier, f.threshold)));
            }
        }
        fired
    }

    #[test]
    fn thresholds_fire_at_or_above_their_share() {
        // (count, tier, highest count reached before in this period and tier, expected)
        let table: &[(i64, i64, i64, &[Threshold])] = &[
            (0, 1_000, 0, &[]),
            (749, 1_000, 0, &[]),
            (750, 1_000, 0, &[P75]),
            (899, 1_000, 750, &[]),
            (900, 1_000, 750, &[P90]),
            (980, 1_000, 900, &[P98]),
            (1_000, 1_000, 980, &[]),
            (1_001, 1_000, 1_000, &[Exceeded]),
            // A jump sends every threshold passed, never only the highest.
            (990, 1_000, 0, &[P75, P90, P98]),
            (5_000, 1_000, 0, &[P75, P90, P98, Exceeded]),
            // Down and up again within the period and tier: nothing again.
            (950, 1_000, 960, &[]),
            // Shares that are not whole contacts: 75 % of 1,001 is 750.75.
            (750, 1_001, 0, &[]),
            (751, 1_001, 0, &[P75]),
            // 98 % of 7,000 is 6,860.
            (6_859, 7_000, 6_300, &[]),
            (6_860, 7_000, 6_300, &[P98]),
            (10, 0, 0, &[]),
        ];
        for (count, tier, before, want) in table {
            assert_eq!(newly_reached(*count, *before, *tier), *want, "{count}/{tier} after {before}");
        }
    }

    #[test]
    fn states_in_a_period_tier_and_across_boundaries() {
        type Case<'a> = (&'a str, &'a [State], &'a [(i64, i64, Threshold)]);
        let cases: &[Case] = &[
            (
                "a count that stays put fires again at each period start",
                &[
                    state(1, "2026-04-15", 2_000, 1_500),
                    state(2, "2026-05-15", 2_000, 1_500),
                    state(3, "2026-06-15", 2_000, 1_500),
                ],
                &[(1, 2_000, P75), (2, 2_000, P75), (3, 2_000, P75)],
            ),
            (
                "within one period the count moves down and up: once",
                &[
                    state(1, "2026-04-15", 2_000, 1_500),
                    state(2, "2026-04-15", 2_000, 1_400),
                    state(3, "2026-04-15", 2_000, 1_600),
                ],
                &[(1, 2_000, P75)],
            ),
            (
                "a renewal to a lower tier at 80 %",
                &[state(1, "2026-04-15", 2_000, 800), state(2, "2026-05-15", 1_000, 800)],
                &[(2, 1_000, P75)],
            ),
            (
                "a renewal to a higher tier at the same count re-arms",
                &[state(1, "2026-04-15", 1_000, 950), state(2, "2026-05-15", 2_000, 1_600)],
                &[(1, 1_000, P75), (1, 1_000, P90), (2, 2_000, P75)],
            ),
            (
                "an upgrade fires the old tier's exceeded and checks the new tier",
                &[state(1, "2026-04-15", 2_000, 1_000), upgraded(2, "2026-04-15", 2_000, 7_000, 6_900)],
                &[
                    (2, 2_000, P75),
                    (2, 2_000, P90),
                    (2, 2_000, P98),
                    (2, 2_000, Exceeded),
                    (2, 7_000, P75),
                    (2, 7_000, P90),
                    (2, 7_000, P98),
                ],
            ),
            (
                "an upgrade after the old tier's alerts fired sends only what is new",
                &[state(1, "2026-04-15", 1_000, 990), upgraded(2, "2026-04-15", 1_000, 2_000, 1_001)],
                &[(1, 1_000, P75), (1, 1_000, P90), (1, 1_000, P98), (2, 1_000, Exceeded)],
            ),
            (
                "a period start lowering the count at a lower tier",
                &[state(1, "2026-04-15", 2_000, 1_900), state(2, "2026-05-15", 1_000, 700)],
                &[(1, 2_000, P75), (1, 2_000, P90)],
            ),
        ];
        for (what, states, want) in cases {
            assert_eq!(run(states), *want, "{what}");
        }
    }

    #[test]
    fn replays_and_any_order_of_arrival_fire_the_same() {
        let states = vec![
            state(1, "2026-04-15", 1_000, 500),
            state(2, "2026-04-15", 1_000, 800),
            state(3, "2026-04-15", 1_000, 700),
            state(4, "2026-05-15", 1_000, 760),
            upgraded(5, "2026-05-15", 1_000, 2_000, 1_950),
        ];
        let in_order = run(&states);
        assert_eq!(
            in_order,
            [
                (2, 1_000, P75),
                (4, 1_000, P75),
                (5, 1_000, P90),
                (5, 1_000, P98),
                (5, 1_000, Exceeded),
                (5, 2_000, P75),
                (5, 2_000, P90)
            ]
        );
        // Every order of arrival, each state sent twice.
        let mut order: Vec<usize> = (0..states.len()).collect();
        let mut permutations = 0;
        permute(&mut order, 0, &mut |o| {
            let arrivals: Vec<State> = o.iter().chain(o.iter().rev()).map(|&i| states[i].clone()).collect();
            assert_eq!(run(&arrivals), in_order, "arrival order {o:?}");
            permutations += 1;
        });
        assert_eq!(permutations, 120);
    }

    fn permute(v: &mut Vec<usize>, k: usize, f: &mut impl FnMut(&[usize])) {
        if k == v.len() {
            return f(v);
        }
        for i in k..v.len() {
            v.swap(k, i);
            permute(v, k + 1, f);
            v.swap(k, i);
        }
    }

    #[test]
    fn a_later_state_waits_for_the_one_before_it() {
        let mut pending = Pending::default();
        pending.states.insert(2, state(2, "2026-04-15", 1_000, 800));
        let (done, armed) = pending.evaluate(Armed::default());
        assert!(done.is_empty());
        assert_eq!(armed.version, 0);
        pending.states.insert(1, state(1, "2026-04-15", 1_000, 100));
        let (done, armed) = pending.evaluate(armed);
        assert_eq!(done.iter().map(|(s, _)| s.version).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((armed.version, armed.high), (2, 800));
    }
}
