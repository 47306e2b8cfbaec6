//! Property definitions and value validation: the standard properties every account has, custom
//! ones an account defines, and the normal form of a value of each type.

use chrono::NaiveDate;
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertyType {
    SingleLineText,
    MultiLineText,
    Enumeration,
    Number,
    Date,
    Checkbox,
}

impl PropertyType {
    pub fn as_str(self) -> &'static str {
        match self {
            PropertyType::SingleLineText => "single_line_text",
            PropertyType::MultiLineText => "multi_line_text",
            PropertyType::Enumeration => "enumeration",
            PropertyType::Number => "number",
            PropertyType::Date => "date",
            PropertyType::Checkbox => "checkbox",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            PropertyType::SingleLineText,
            PropertyType::MultiLineText,
            PropertyType::Enumeration,
            PropertyType::Number,
            PropertyType::Date,
            PropertyType::Checkbox,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropertyOption {
    pub value: String,
    pub label: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definition {
    pub name: String,
    pub label: String,
    pub ptype: PropertyType,
    pub options: Vec<PropertyOption>,
    pub standard: bool,
    pub description: String,
}

/// A value as a refusal shows it: quoted, and cut after 64 characters, so that a refusal of a
/// long value stays a short message.
pub fn quoted(value: &str) -> String {
    format!("{:?}", cut(value, 64))
}

/// `text` cut after `chars` characters, an ellipsis saying so.
pub fn cut(text: &str, chars: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]).into(),
        None => text.into(),
    }
}

/// Names that are fields of every contact, not properties.
pub const RESERVED: [&str; 4] = ["email", "id", "created_at", "updated_at"];
/// Longest text value (HubSpot's limit).
pub const MAX_TEXT: usize = 65_536;
/// Most bytes a contact's values take together (as the JSON object it is answered from): a
/// contact read whole must fit a client's default 4 MiB message, and many of them one statement.
pub const MAX_CONTACT_BYTES: usize = 1 << 20;

/// [`check_total`] of checked values, as they would be stored. Each key and value takes at
/// most six bytes of JSON a byte (an escaped control character), so values well under the
/// limit are passed without writing their JSON.
pub fn check_values_total(values: &BTreeMap<String, Value>) -> Result<(), String> {
    let most: usize = 2 + values.iter().map(|(k, v)| 6 * (k.len() + v.text.len()) + 6).sum::<usize>();
    if most <= MAX_CONTACT_BYTES {
        return Ok(());
    }
    let shown: BTreeMap<&str, &str> = values.iter().map(|(k, v)| (k.as_str(), v.text.as_str())).collect();
    check_total(&serde_json::to_string(&shown).expect("JSON of strings"))
}

/// Refuses values that together pass [`MAX_CONTACT_BYTES`] (`json` is them as stored).
pub fn check_total(json: &str) -> Result<(), String> {
    if json.len() > MAX_CONTACT_BYTES {
        return Err(format!(
            "the contact would hold {} bytes of values; at most {MAX_CONTACT_BYTES} together",
            json.len()
        ));
    }
    Ok(())
}

pub const LIFECYCLE_STAGES: [&str; 8] = [
    "subscriber",
    "lead",
    "marketing_qualified_lead",
    "sales_qualified_lead",
    "opportunity",
    "customer",
    "evangelist",
    "other",
];

pub const LEAD_STATUSES: [&str; 8] = [
    "new",
    "open",
    "in_progress",
    "open_deal",
    "unqualified",
    "attempted_to_contact",
    "connected",
    "bad_timing",
];

fn options(values: &[&str]) -> Vec<PropertyOption> {
    values.iter().map(|v| PropertyOption { value: (*v).to_owned(), label: v.replace('_', " ") }).collect()
}

/// Whether `name` is one of the [`standard`] properties.
pub fn is_standard(name: &str) -> bool {
    standard().iter().any(|d| d.name == name)
}

/// The standard properties, built in for every account.
pub fn standard() -> Vec<Definition> {
    let text = |name: &str, label: &str| Definition {
        name: name.into(),
        label: label.into(),
        ptype: PropertyType::SingleLineText,
        options: vec![],
        standard: true,
        description: String::new(),
    };
    let choice = |name: &str, label: &str, values: &[&str]| Definition {
        ptype: PropertyType::Enumeration,
        options: options(values),
        ..text(name, label)
    };
    vec![
        text("first_name", "First name"),
        text("last_name", "Last name"),
        text("phone", "Phone number"),
        text("company", "Company name"),
        text("job_title", "Job title"),
        choice("lifecycle_stage", "Lifecycle stage", &LIFECYCLE_STAGES),
        choice("lead_status", "Lead status", &LEAD_STATUSES),
        text("owner_id", "Contact owner"),
        Definition {
            ptype: PropertyType::Number,
            description: "Worked out from the account's scoring rules; not set by hand.".into(),
            ..text(CALCULATED[0], "Lead score")
        },
    ]
}

/// Standard properties the service works out itself: a value given for one is refused.
pub const CALCULATED: [&str; 1] = ["lead_score"];

/// Whether `name` may name a custom property: lower_snake_case, at most 100 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 100
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err("lower_snake_case, starting with a letter, at most 100 characters".into());
    }
    if RESERVED.contains(&name) {
        return Err(format!("{name} is a field of every contact"));
    }
    Ok(())
}

/// A value in its normal form, and its number for numeric properties.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub text: String,
    pub num: Option<f64>,
}

/// Checks `raw` against the property's type and answers its normal form: text trimmed (single
/// lines), numbers as plain decimals, dates as YYYY-MM-DD, checkboxes as true/false.
pub fn normalize(def: &Definition, raw: &str) -> Result<Value, String> {
    let text = |t: String| Ok(Value { text: t, num: None });
    match def.ptype {
        PropertyType::SingleLineText => {
            let t = raw.trim();
            if t.contains(['\n', '\r']) {
                return Err("a single line: no line breaks".into());
            }
            if t.chars().count() > MAX_TEXT {
                return Err(format!("at most {MAX_TEXT} characters"));
            }
            text(t.to_owned())
        }
        PropertyType::MultiLineText => {
            if raw.chars().count() > MAX_TEXT {
                return Err(format!("at most {MAX_TEXT} characters"));
            }
            text(raw.to_owned())
        }
        PropertyType::Enumeration => {
            let t = raw.trim();
            if def.options.iter().any(|o| o.value == t) {
                text(t.to_owned())
            } else {
                let known: Vec<&str> = def.options.iter().take(20).map(|o| o.value.as_str()).collect();
                let more = def.options.len().saturating_sub(known.len());
                let more = if more > 0 { format!(" and {more} more") } else { String::new() };
                Err(format!("{} is not an option; one of {}{more}", quoted(t), known.join(", ")))
            }
        }
        PropertyType::Number => {
            let t = raw.trim();
            let (int, frac) = t
                .strip_prefix('-')
                .unwrap_or(t)
                .split_once('.')
                .unwrap_or((t.strip_prefix('-').unwrap_or(t), ""));
            let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
            let well_formed =
                !int.is_empty() && digits(int) && digits(frac) && !(t.contains('.') && frac.is_empty());
            let n: f64 = t.parse().ok().filter(|n: &f64| n.is_finite() && well_formed).ok_or_else(|| {
                format!("{} is not a number (digits, an optional minus and decimal point)", quoted(t))
            })?;
            // Leading zeros and trailing fractional zeros go; "-0" is 0.
            let int = int.trim_start_matches('0');
            let frac = frac.trim_end_matches('0');
            let mut s = String::new();
            if n != 0.0 && t.starts_with('-') {
                s.push('-');
            }
            s.push_str(if int.is_empty() { "0" } else { int });
            if !frac.is_empty() {
                s.push('.');
                s.push_str(frac);
            }
            Ok(Value { text: s, num: Some(n) })
        }
        PropertyType::Date => {
            let t = raw.trim();
            // Four-digit years only (0001 to 9999), so that dates compare as their text does.
            let b = t.as_bytes();
            let shaped = b.len() == 10
                && b[4] == b'-'
                && b[7] == b'-'
                && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
            let d = NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .ok()
                .filter(|d| shaped && chrono::Datelike::year(d) >= 1)
                .ok_or_else(|| format!("{} is not a date (YYYY-MM-DD, years 0001 to 9999)", quoted(t)))?;
            text(d.format("%Y-%m-%d").to_string())
        }
        PropertyType::Checkbox => match parse_bool(raw) {
            Some(b) => text(b.to_string()),
            None => Err(format!("{} is not true or false", quoted(raw.trim()))),
        },
    }
}

/// true/false, yes/no, 1/0, in any case.
pub fn parse_bool(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// The properties an account can set: standard ones and its custom definitions, by name.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub by_name: BTreeMap<String, Definition>,
}

impl Catalog {
    pub fn new(custom: Vec<Definition>) -> Self {
        let by_name = standard().into_iter().chain(custom).map(|d| (d.name.clone(), d)).collect();
        Self { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Definition> {
        self.by_name.get(name)
    }

    /// Validates a set of values: unknown names and mistyped values are refused with the
    /// property named. An empty value clears the property (None).
    pub fn check(
        &self,
        values: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Option<Value>>, (String, String)> {
        let mut out = BTreeMap::new();
        for (name, raw) in values {
            let def = self.get(name).ok_or_else(|| (name.clone(), "no such property".to_owned()))?;
            if CALCULATED.contains(&name.as_str()) {
                return Err((
                    name.clone(),
                    "worked out from the account's scoring rules; not set by hand".to_owned(),
                ));
            }
            let v = if raw.trim().is_empty() {
                None
            } else {
                Some(normalize(def, raw).map_err(|r| (name.clone(), r))?)
            };
            out.insert(name.clone(), v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(ptype: PropertyType) -> Definition {
        Definition {
            name: "p".into(),
            label: "P".into(),
            ptype,
            options: options(&["gold", "silver"]),
            standard: false,
            description: String::new(),
        }
    }

    #[test]
    fn values_together_are_counted_as_their_json() {
        let of = |text: String| BTreeMap::from([("notes".to_owned(), Value { text, num: None })]);
        assert!(check_values_total(&of("a".repeat(MAX_CONTACT_BYTES - 20))).is_ok());
        assert!(check_values_total(&of("a".repeat(MAX_CONTACT_BYTES))).is_err());
        // Escaped, a control character takes six bytes of JSON.
        let err = check_values_total(&of("\u{1}".repeat(MAX_CONTACT_BYTES / 5))).unwrap_err();
        // {"notes":"…"}: twelve bytes besides the value.
        let json_len = 6 * (MAX_CONTACT_BYTES / 5) + 12;
        assert!(err.starts_with(&format!("the contact would hold {json_len} bytes")), "{err}");
    }

    #[test]
    fn a_refusal_quotes_a_long_value_cut_short() {
        let mut d = def(PropertyType::Number);
        let err = normalize(&d, &"x".repeat(65_536)).unwrap_err();
        assert!(err.starts_with(&format!("\"{}…\" is not a number", "x".repeat(64))), "{err}");
        assert!(err.len() < 200, "{err}");
        d.ptype = PropertyType::Enumeration;
        d.options = options(
            &(0..1_000)
                .map(|i| format!("option-{i}"))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        let err = normalize(&d, "nope").unwrap_err();
        assert!(err.ends_with("option-19 and 980 more"), "{err}");
    }

    #[test]
    fn values_take_their_normal_form_or_are_refused() {
        use PropertyType::*;
        let ok = [
            (SingleLineText, "  Ada  ", "Ada"),
            (MultiLineText, "line 1\nline 2", "line 1\nline 2"),
            (Enumeration, "gold", "gold"),
            (Number, "42", "42"),
            (Number, "-0012.500", "-12.5"),
            (Number, "0.0", "0"),
            (Number, "-0", "0"),
            (Date, "2028-02-29", "2028-02-29"),
            (Checkbox, "Yes", "true"),
            (Checkbox, "0", "false"),
        ];
        for (t, raw, want) in ok {
            assert_eq!(normalize(&def(t), raw).unwrap().text, want, "{t:?} {raw:?}");
        }
        assert_eq!(normalize(&def(Number), "-12.5").unwrap().num, Some(-12.5));
        let bad = [
            (SingleLineText, "two\nlines"),
            (Enumeration, "bronze"),
            (Enumeration, "Gold"),
            (Number, "1e5"),
            (Number, "12."),
            (Number, ".5"),
            (Number, "NaN"),
            (Number, "1,5"),
            (Date, "2027-02-29"),
            (Date, "29.02.2028"),
            // Years that would not compare as text, or are no year at all.
            (Date, "0000-01-01"),
            (Date, "-0005-01-01"),
            (Date, "+12345-01-01"),
            (Date, "12345-01-01"),
            (Date, "2026-1-05"),
            (Checkbox, "maybe"),
        ];
        for (t, raw) in bad {
            assert!(normalize(&def(t), raw).is_err(), "{t:?} {raw:?} must be refused");
        }
        assert!(normalize(&def(SingleLineText), &"x".repeat(MAX_TEXT + 1)).is_err());
        assert!(normalize(&def(MultiLineText), &"é".repeat(MAX_TEXT)).is_ok(), "characters, not bytes");
    }

    #[test]
    fn custom_names_are_snake_case_and_not_reserved() {
        assert!(check_name("favourite_colour_2").is_ok());
        for bad in ["", "Favourite", "2nd", "with-dash", "email", "created_at", &"a".repeat(101)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_catalog_names_the_property_it_refuses() {
        let c = Catalog::new(vec![Definition { name: "score".into(), ..def(PropertyType::Number) }]);
        let mut v = BTreeMap::new();
        v.insert("score".to_owned(), "7".to_owned());
        v.insert("lifecycle_stage".to_owned(), "customer".to_owned());
        v.insert("company".to_owned(), "".to_owned());
        let got = c.check(&v).unwrap();
        assert_eq!(got["score"].as_ref().unwrap().num, Some(7.0));
        assert_eq!(got["company"], None, "empty clears");
        v.insert("shoe_size".to_owned(), "44".to_owned());
        assert_eq!(c.check(&v).unwrap_err().0, "shoe_size");
        v.remove("shoe_size");
        v.insert("lifecycle_stage".to_owned(), "alien".to_owned());
        assert_eq!(c.check(&v).unwrap_err().0, "lifecycle_stage");
    }
}
