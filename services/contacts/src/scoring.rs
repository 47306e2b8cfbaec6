//! Lead scoring: an account's rules give points for what a contact's properties hold and for
//! what it did within a window; the sum is its `lead_score`, and reaching the account's
//! threshold makes a lead a marketing qualified lead. Plain functions over what the store reads.

use crate::lifecycle;
use crate::properties::{self, Definition, PropertyType};
use std::collections::BTreeMap;

/// The property the score is kept in.
pub const PROPERTY: &str = "lead_score";
/// The stage a score at or over the threshold moves a contact to.
pub const MQL: &str = "marketing_qualified_lead";
/// Most points one rule gives or takes.
pub const MAX_POINTS: i64 = 1_000;
/// The longest window a behaviour rule looks back.
pub const MAX_WINDOW_DAYS: i64 = 3_650;
const DAY_MICROS: i64 = 86_400_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operator {
    Eq,
    Neq,
    Contains,
    HasProperty,
    NotHasProperty,
    /// Numbers only.
    Gt,
    Lt,
}

/// What a rule looks for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Criterion {
    Property {
        property: String,
        operator: Operator,
        value: String,
    },
    /// An event of `kind` (page_view, form_submission, email_open, email_click) whose form id,
    /// email id or URL holds `matches` (any when empty), within `window_days` of now.
    Behaviour {
        kind: String,
        matches: String,
        window_days: i64,
    },
    /// The contact unsubscribed from all email.
    Unsubscribed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub points: i64,
    pub criterion: Criterion,
}

/// One recorded event as scoring sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: String,
    /// Its form id, email id and URL, any of which a rule may match.
    pub form_id: String,
    pub email_id: String,
    pub url: String,
    pub at: i64,
}

/// What a contact's score is decided from.
pub struct Facts<'a> {
    pub values: &'a BTreeMap<String, String>,
    pub events: &'a [Event],
    pub unsubscribed: bool,
    pub now: i64,
}

/// A contact's score, and when it next changes by itself (an event leaving a window).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scored {
    pub score: i64,
    pub due_at: Option<i64>,
}

/// The value a property rule compares with, in the property's normal form, so a rule matches
/// the values as they are stored ("10.0" is the number 10); refused when no value of the
/// property could ever match it.
pub fn rule_value(def: &Definition, op: Operator, raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    match op {
        Operator::HasProperty | Operator::NotHasProperty if raw.is_empty() => Ok(String::new()),
        Operator::HasProperty | Operator::NotHasProperty => Err("no value for this operator".into()),
        _ if raw.is_empty() => Err("required for this operator".into()),
        Operator::Gt | Operator::Lt if def.ptype != PropertyType::Number => {
            Err(format!("GT and LT compare numbers; {} is a {} property", def.name, def.ptype.as_str()))
        }
        Operator::Contains => Ok(raw.to_owned()),
        _ => match def.ptype {
            PropertyType::SingleLineText | PropertyType::MultiLineText => Ok(raw.to_owned()),
            _ => properties::normalize(def, raw).map(|v| v.text),
        },
    }
}

fn property_holds(values: &BTreeMap<String, String>, property: &str, op: Operator, want: &str) -> bool {
    let got = values.get(property).filter(|v| !v.is_empty());
    let num = |s: &str| s.parse::<f64>().ok();
    match op {
        Operator::HasProperty => got.is_some(),
        Operator::NotHasProperty => got.is_none(),
        Operator::Eq => got.is_some_and(|v| v.eq_ignore_ascii_case(want)),
        Operator::Neq => !got.is_some_and(|v| v.eq_ignore_ascii_case(want)),
        Operator::Contains => got.is_some_and(|v| v.to_lowercase().contains(&want.to_lowercase())),
        Operator::Gt => got.and_then(|v| num(v)).zip(num(want)).is_some_and(|(a, b)| a > b),
        Operator::Lt => got.and_then(|v| num(v)).zip(num(want)).is_some_and(|(a, b)| a < b),
    }
}

fn event_matches(e: &Event, kind: &str, matches: &str) -> bool {
    e.kind == kind
        && (matches.is_empty()
            || e.form_id == matches
            || e.email_id == matches
            || e.url.to_lowercase().contains(&matches.to_lowercase()))
}

/// The score of a contact under `rules`: each rule that holds counts once.
pub fn score(rules: &[Rule], f: &Facts<'_>) -> Scored {
    let mut score = 0;
    let mut due_at: Option<i64> = None;
    for r in rules {
        let holds = match &r.criterion {
            Criterion::Property { property, operator, value } => {
                property_holds(f.values, property, *operator, value)
            }
            Criterion::Unsubscribed => f.unsubscribed,
            Criterion::Behaviour { kind, matches, window_days } => {
                let window = window_days * DAY_MICROS;
                // The latest matching event in the window keeps the rule holding the longest.
                let latest = f
                    .events
                    .iter()
                    .filter(|e| event_matches(e, kind, matches) && e.at <= f.now && e.at > f.now - window)
                    .map(|e| e.at)
                    .max();
                // An event recorded ahead of now (clocks differ) counts when its time comes.
                let arrives = f
                    .events
                    .iter()
                    .filter(|e| event_matches(e, kind, matches) && e.at > f.now)
                    .map(|e| e.at)
                    .min();
                for next in latest.map(|at| at + window).into_iter().chain(arrives) {
                    due_at = Some(due_at.map_or(next, |d| d.min(next)));
                }
                latest.is_some()
            }
        };
        if holds {
            score += r.points;
        }
    }
    Scored { score, due_at }
}

/// Whether a score reaches the threshold (a threshold of 0 is none).
pub fn reaches(score: i64, threshold: i64) -> bool {
    threshold > 0 && score >= threshold
}

/// The stage a score moves a contact to, if it moves it: a contact before marketing qualified
/// (or without a stage) whose score comes to reach the threshold becomes one; never backwards.
/// `reached_before` is whether its last score reached the threshold of its time: a score that
/// stays over it does not promote again, so a person who moved the contact back is not
/// overruled, while a threshold lowered under the score, or a score rising past a raised one,
/// reaches it anew.
pub fn promoted(
    stage: Option<&str>,
    score: i64,
    threshold: i64,
    reached_before: bool,
) -> Option<&'static str> {
    if reached_before || !reaches(score, threshold) {
        return None;
    }
    let mql = lifecycle::rank(MQL).expect("ranked");
    match stage.filter(|s| !s.is_empty()) {
        None => Some(MQL),
        Some(s) => lifecycle::rank(s).filter(|r| *r < mql).map(|_| MQL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 100 * DAY_MICROS;

    fn def(name: &str, ptype: PropertyType) -> Definition {
        Definition {
            name: name.into(),
            label: name.into(),
            ptype,
            options: vec![],
            standard: false,
            description: String::new(),
        }
    }

    #[test]
    fn a_rule_value_no_value_could_match_is_refused() {
        let amount = def("amount", PropertyType::Number);
        let company = def("company", PropertyType::SingleLineText);
        let stage = properties::standard().into_iter().find(|d| d.name == "lifecycle_stage").unwrap();
        // Numbers in their stored form; NaN, infinities and exponents are no numbers.
        assert_eq!(rule_value(&amount, Operator::Eq, " 10.0 "), Ok("10".to_owned()));
        assert_eq!(rule_value(&amount, Operator::Gt, "007.50"), Ok("7.5".to_owned()));
        for bad in ["NaN", "inf", "-Infinity", "1e400", "1e3", "abc"] {
            assert!(rule_value(&amount, Operator::Gt, bad).is_err(), "{bad}");
            assert!(rule_value(&amount, Operator::Eq, bad).is_err(), "{bad}");
        }
        // GT and LT on a text property could never hold.
        assert!(rule_value(&company, Operator::Gt, "5").unwrap_err().contains("compare numbers"));
        assert_eq!(rule_value(&company, Operator::Eq, " Acme "), Ok("Acme".to_owned()));
        // An enumeration's value must be one of its options.
        assert!(rule_value(&stage, Operator::Eq, "bogus_stage").is_err());
        assert_eq!(rule_value(&stage, Operator::Neq, "lead"), Ok("lead".to_owned()));
        // HAS_PROPERTY takes no value; the others need one.
        assert!(rule_value(&company, Operator::HasProperty, "x").is_err());
        assert_eq!(rule_value(&company, Operator::NotHasProperty, " "), Ok(String::new()));
        assert!(rule_value(&company, Operator::Contains, "  ").is_err());
    }

    fn rule(points: i64, criterion: Criterion) -> Rule {
        Rule { id: format!("r{points}"), points, criterion }
    }

    fn form(id: &str, at: i64) -> Event {
        Event {
            kind: "form_submission".into(),
            form_id: id.into(),
            email_id: String::new(),
            url: String::new(),
            at,
        }
    }

    #[test]
    fn a_demo_form_counts_for_its_window_and_says_when_it_leaves() {
        let rules = [
            rule(
                10,
                Criterion::Behaviour {
                    kind: "form_submission".into(),
                    matches: "demo".into(),
                    window_days: 30,
                },
            ),
            rule(-3, Criterion::Unsubscribed),
        ];
        let values = BTreeMap::new();
        let events = [
            form("demo", NOW - 5 * DAY_MICROS),
            form("demo", NOW - 40 * DAY_MICROS),
            form("newsletter", NOW),
        ];
        let f = Facts { values: &values, events: &events, unsubscribed: true, now: NOW };
        let s = score(&rules, &f);
        assert_eq!(s.score, 7, "one demo form in the window counts once, less the unsubscribe");
        assert_eq!(
            s.due_at,
            Some(NOW - 5 * DAY_MICROS + 30 * DAY_MICROS),
            "when the demo form leaves the window"
        );
        let later = Facts { now: NOW + 26 * DAY_MICROS, ..f };
        assert_eq!(score(&rules, &later), Scored { score: -3, due_at: None });
    }

    #[test]
    fn an_event_ahead_of_now_counts_from_its_time() {
        let rules = [rule(
            10,
            Criterion::Behaviour { kind: "form_submission".into(), matches: String::new(), window_days: 30 },
        )];
        let values = BTreeMap::new();
        let events = [form("demo", NOW + 3_600_000_000)];
        let f = Facts { values: &values, events: &events, unsubscribed: false, now: NOW };
        assert_eq!(score(&rules, &f), Scored { score: 0, due_at: Some(NOW + 3_600_000_000) });
        let then = Facts { now: NOW + 3_600_000_000, ..f };
        let leaves = NOW + 3_600_000_000 + 30 * DAY_MICROS;
        assert_eq!(score(&rules, &then), Scored { score: 10, due_at: Some(leaves) });
    }

    #[test]
    fn property_rules_read_values_as_people_mean_them() {
        let values: BTreeMap<String, String> =
            [("job_title", "CTO"), ("company", "Analytical Engines"), ("employees", "250")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let p = |property: &str, operator, value: &str| {
            rule(1, Criterion::Property { property: property.into(), operator, value: value.into() })
        };
        let f = Facts { values: &values, events: &[], unsubscribed: false, now: NOW };
        let holds = |r: Rule| score(&[r], &f).score == 1;
        assert!(holds(p("job_title", Operator::Eq, "cto")));
        assert!(holds(p("company", Operator::Contains, "engines")));
        assert!(holds(p("employees", Operator::Gt, "100")));
        assert!(!holds(p("employees", Operator::Lt, "100")));
        assert!(holds(p("phone", Operator::NotHasProperty, "")));
        assert!(holds(p("job_title", Operator::Neq, "CEO")));
        assert!(!holds(p("job_title", Operator::Gt, "5")), "not a number: never greater");
    }

    #[test]
    fn reaching_the_threshold_makes_an_mql_and_never_moves_back() {
        assert_eq!(promoted(Some("lead"), 50, 50, false), Some(MQL));
        assert_eq!(promoted(None, 60, 50, false), Some(MQL));
        assert_eq!(promoted(Some("subscriber"), 60, 50, false), Some(MQL));
        assert_eq!(promoted(Some("lead"), 49, 50, false), None);
        assert_eq!(promoted(Some(MQL), 99, 50, false), None);
        assert_eq!(promoted(Some("customer"), 99, 50, false), None, "never backwards");
        assert_eq!(promoted(Some("other"), 99, 50, false), None, "off the path");
        assert_eq!(promoted(Some("lead"), 99, 0, false), None, "no threshold set");
    }

    #[test]
    fn a_score_that_stays_over_the_threshold_does_not_promote_again() {
        assert_eq!(promoted(Some("lead"), 60, 50, true), None, "moved back by a person: stays");
        assert_eq!(promoted(Some("lead"), 60, 50, false), Some(MQL), "came to reach it");
        assert!(reaches(50, 50) && !reaches(49, 50) && !reaches(99, 0));
    }
}
