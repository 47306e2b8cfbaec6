//! Duplicate candidates beyond the unique email: the keys a contact is matched by, and the
//! score of a pair from the keys it shares. Plain functions; the store keeps each contact's
//! keys in the transaction that writes its values, so finding pairs is an index lookup.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Why two contacts may be one person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Their addresses are one mailbox at a provider that ignores dots, plus-tags or case in
    /// the local part.
    Email,
    Phone,
    /// Same first and last name at the same company.
    NameAndCompany,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Email => "email",
            Reason::Phone => "phone",
            Reason::NameAndCompany => "name_company",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        [Reason::Email, Reason::Phone, Reason::NameAndCompany].into_iter().find(|r| r.as_str() == s)
    }

    /// How sure a shared key makes a match, out of 100.
    fn weight(self) -> i32 {
        match self {
            Reason::Email => 95,
            Reason::Phone => 80,
            Reason::NameAndCompany => 70,
        }
    }
}

/// Providers whose mailboxes ignore dots in the local part (and take plus-tags).
const DOTS_IGNORED: &[&str] = &["gmail.com", "googlemail.com"];
/// Providers that deliver `name+tag@` to `name@`.
const PLUS_TAGS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "icloud.com",
    "me.com",
    "fastmail.com",
    "proton.me",
    "protonmail.com",
    "yahoo.com",
];

/// The mailbox an address reaches at a provider that ignores dots or plus-tags in the local
/// part (every address there has one, so two spellings of one mailbox share it); None at other
/// domains, where the unique email already tells addresses apart.
pub fn mailbox(email_key: &str) -> Option<String> {
    let (local, domain) = email_key.rsplit_once('@')?;
    let domain = if domain == "googlemail.com" { "gmail.com" } else { domain };
    if !PLUS_TAGS.contains(&domain) && !DOTS_IGNORED.contains(&domain) {
        return None;
    }
    let mut local = local.split_once('+').map_or(local, |(base, _)| base).to_owned();
    if DOTS_IGNORED.contains(&domain) {
        local.retain(|c| c != '.');
    }
    (!local.is_empty()).then(|| format!("{local}@{domain}"))
}

/// A phone number's digits, when there are enough of them to mean a number (seven or more);
/// a leading international `00` is the same as `+`.
pub fn phone(raw: &str) -> Option<String> {
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.strip_prefix("00").map(str::to_owned).unwrap_or(digits);
    (digits.len() >= 7).then_some(digits)
}

fn plain(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// The longest key kept as it is. Keys are only ever compared for equality, so a longer one
/// (values hold up to 65,536 characters) is kept as its SHA-256: an index entry has to fit
/// PostgreSQL's b-tree, which takes about 2.7 kB.
const MAX_KEY_BYTES: usize = 256;

fn bounded(key: String) -> String {
    if key.len() <= MAX_KEY_BYTES {
        return key;
    }
    format!("sha256:{}", crate::csv_records::hex(&Sha256::digest(key.as_bytes())))
}

/// The keys a contact is matched by: its mailbox at forgiving providers, its phone, and its
/// name with its company (all three needed).
pub fn keys(email_key: &str, values: &BTreeMap<String, String>) -> Vec<(Reason, String)> {
    let mut out = Vec::new();
    if let Some(m) = mailbox(email_key) {
        out.push((Reason::Email, m));
    }
    if let Some(p) = values.get("phone").and_then(|p| phone(p)) {
        out.push((Reason::Phone, p));
    }
    let get = |k: &str| values.get(k).map(|v| plain(v)).filter(|v| !v.is_empty());
    if let (Some(first), Some(last), Some(company)) = (get("first_name"), get("last_name"), get("company")) {
        out.push((Reason::NameAndCompany, format!("{first}\n{last}\n{company}")));
    }
    out.into_iter().map(|(reason, key)| (reason, bounded(key))).collect()
}

/// Which contact of a merge a property's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Primary,
    Secondary,
}

/// The values of a merged contact: the primary's non-empty values win and the secondary's fill
/// the gaps, but a property in `choices` takes the chosen side's value (none if it has none).
pub fn merge_values(
    primary: &BTreeMap<String, String>,
    secondary: &BTreeMap<String, String>,
    choices: &BTreeMap<String, Side>,
) -> BTreeMap<String, String> {
    let mut values = secondary.clone();
    values.extend(primary.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.clone(), v.clone())));
    for (name, side) in choices {
        let chosen = match side {
            Side::Primary => primary.get(name),
            Side::Secondary => secondary.get(name),
        };
        match chosen.filter(|v| !v.is_empty()) {
            Some(v) => values.insert(name.clone(), v.clone()),
            None => values.remove(name),
        };
    }
    values
}

/// The consent of a merged contact: one person's, so an unsubscribe from either side holds
/// (and leaves no subscription), and otherwise every opt-in does; the legal basis and opt-in
/// time are the primary's when it has them.
pub fn merge_consent(primary: Option<Consent>, secondary: Option<Consent>) -> Option<Consent> {
    let (p, s) = match (primary, secondary) {
        (None, None) => return None,
        (Some(c), None) | (None, Some(c)) => return Some(c),
        (Some(p), Some(s)) => (p, s),
    };
    let out = p.unsubscribed_from_all || s.unsubscribed_from_all;
    let mut types: Vec<String> = p.subscription_types.clone();
    types.extend(s.subscription_types.into_iter().filter(|t| !p.subscription_types.contains(t)));
    // Unsubscribed from all is subscribed to nothing, as when it is set.
    types.retain(|_| !out);
    Some(Consent {
        legal_basis: if p.legal_basis.is_empty() { s.legal_basis } else { p.legal_basis },
        opted_in_at: if p.opted_in_at == 0 { s.opted_in_at } else { p.opted_in_at },
        subscription_types: types,
        unsubscribed_from_all: out,
    })
}

/// A contact's consent, as [`merge_consent`] joins two.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Consent {
    pub legal_basis: String,
    pub opted_in_at: i64,
    pub subscription_types: Vec<String>,
    pub unsubscribed_from_all: bool,
}

/// The score of a pair sharing `reasons`: the surest reason, and 5 more for each other one,
/// at most 100.
pub fn score(reasons: &[Reason]) -> i32 {
    let best = reasons.iter().map(|r| r.weight()).max().unwrap_or(0);
    (best + 5 * (reasons.len() as i32 - 1).max(0)).min(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent(basis: &str, at: i64, types: &[&str], out: bool) -> Consent {
        Consent {
            legal_basis: basis.into(),
            opted_in_at: at,
            subscription_types: types.iter().map(std::string::ToString::to_string).collect(),
            unsubscribed_from_all: out,
        }
    }

    #[test]
    fn a_merged_contact_keeps_either_sides_unsubscribe_and_opt_ins() {
        let p = consent("consent", 5, &["news"], false);
        let s = consent("legitimate_interest", 9, &[], true);
        let m = merge_consent(Some(p.clone()), Some(s.clone())).unwrap();
        assert_eq!(m, consent("consent", 5, &[], true));
        let both_in = merge_consent(Some(p.clone()), Some(consent("", 0, &["offers", "news"], false)));
        assert_eq!(both_in, Some(consent("consent", 5, &["news", "offers"], false)));
        let m = merge_consent(Some(s.clone()), Some(p.clone())).unwrap();
        assert!(m.unsubscribed_from_all, "the primary's own unsubscribe holds too");
        assert_eq!(merge_consent(None, Some(s.clone())), Some(s));
        assert_eq!(merge_consent(Some(p.clone()), None), Some(p));
        assert_eq!(merge_consent(None, None), None);
        let m = merge_consent(Some(consent("", 0, &[], false)), Some(consent("consent", 3, &[], false)));
        assert_eq!(m, Some(consent("consent", 3, &[], false)), "gaps filled from the secondary");
    }

    #[test]
    fn mailboxes_follow_what_each_provider_ignores() {
        assert_eq!(mailbox("ada.lovelace+crm@gmail.com").as_deref(), Some("adalovelace@gmail.com"));
        assert_eq!(mailbox("adalovelace@gmail.com").as_deref(), Some("adalovelace@gmail.com"));
        assert_eq!(mailbox("adalovelace@googlemail.com").as_deref(), Some("adalovelace@gmail.com"));
        assert_eq!(mailbox("ada+news@outlook.com").as_deref(), Some("ada@outlook.com"));
        // Dots matter at Outlook; they are different mailboxes.
        assert_eq!(mailbox("a.da@outlook.com").as_deref(), Some("a.da@outlook.com"));
        // A company's own domain: its addresses are their own; nothing to add.
        assert_eq!(mailbox("ada+x@example.com"), None);
        assert_eq!(mailbox("+tag@gmail.com"), None);
    }

    #[test]
    fn phones_match_by_their_digits() {
        assert_eq!(phone("+41 (44) 668-18-00").as_deref(), Some("41446681800"));
        assert_eq!(phone("0041 44 668 18 00").as_deref(), Some("41446681800"));
        assert_eq!(phone("12-34"), None, "too short to mean a number");
    }

    #[test]
    fn name_and_company_need_all_three() {
        let v = |p: &[(&str, &str)]| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let full = keys(
            "ada@example.com",
            &v(&[("first_name", " Ada "), ("last_name", "LOVELACE"), ("company", "Analytical  Engines")]),
        );
        assert_eq!(full, [(Reason::NameAndCompany, "ada\nlovelace\nanalytical engines".to_owned())]);
        assert!(keys("ada@example.com", &v(&[("first_name", "Ada"), ("last_name", "Lovelace")])).is_empty());
    }

    #[test]
    fn long_keys_are_kept_as_digests_that_still_match() {
        let v = |company: &str| {
            [("first_name", "Ada"), ("last_name", "Lovelace"), ("company", company)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let long = "Ü".repeat(5_000);
        let a = keys("ada@example.com", &v(&long));
        let b = keys("ada@example.org", &v(&format!("  {long} ")));
        assert_eq!(a, b, "the same name and company, spelled with other spaces");
        assert!(a[0].1.starts_with("sha256:") && a[0].1.len() <= MAX_KEY_BYTES, "{}", a[0].1);
        assert_ne!(a, keys("ada@example.com", &v(&format!("{long}x"))));
        let phone = keys("ada@example.com", &[("phone".to_owned(), "5".repeat(40_000))].into());
        assert!(phone[0].1.starts_with("sha256:"));
    }

    #[test]
    fn a_merge_takes_the_chosen_side_of_each_property_named() {
        let m = |p: &[(&str, &str)]| {
            p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()
        };
        let primary = m(&[("company", "Old Co"), ("phone", ""), ("first_name", "Ada")]);
        let secondary = m(&[("company", "New Co"), ("phone", "+41 44 000"), ("job_title", "CTO")]);
        let by_rule = merge_values(&primary, &secondary, &BTreeMap::new());
        assert_eq!(
            by_rule,
            m(&[("company", "Old Co"), ("phone", "+41 44 000"), ("first_name", "Ada"), ("job_title", "CTO")])
        );
        let choices =
            [("company".to_owned(), Side::Secondary), ("job_title".to_owned(), Side::Primary)].into();
        let chosen = merge_values(&primary, &secondary, &choices);
        assert_eq!(chosen, m(&[("company", "New Co"), ("phone", "+41 44 000"), ("first_name", "Ada")]));
    }

    #[test]
    fn scores_rise_with_every_shared_reason() {
        assert_eq!(score(&[Reason::NameAndCompany]), 70);
        assert_eq!(score(&[Reason::Phone, Reason::NameAndCompany]), 85);
        assert_eq!(score(&[Reason::Email, Reason::Phone, Reason::NameAndCompany]), 100);
    }
}
