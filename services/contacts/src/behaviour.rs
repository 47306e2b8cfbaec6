//! Tracked behaviour: what one recorded event is, and how page views make visits. Plain
//! functions; the store applies them to the contact in the transaction that records the event.

/// A page view this long after the latest one begins a new visit (a session's usual timeout).
pub const VISIT_GAP_MICROS: i64 = 30 * 60 * 1_000_000;

/// Most characters of a URL.
pub const MAX_URL: usize = 2_048;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    PageView { url: String, traffic_source: String },
    FormSubmission { form_id: String, page_url: String },
    EmailOpen { email_id: String },
    EmailClick { email_id: String, url: String },
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::PageView { .. } => "page_view",
            Kind::FormSubmission { .. } => "form_submission",
            Kind::EmailOpen { .. } => "email_open",
            Kind::EmailClick { .. } => "email_click",
        }
    }
}

/// A contact's visits, as kept on the contact.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Visits {
    pub count: i64,
    pub first_at: i64,
    pub last_at: i64,
    /// The latest page view, which the gap is measured from.
    pub last_view_at: i64,
    pub original_source: String,
    pub latest_source: String,
}

/// The visits after a page view at `at` from `source`. A view more than [`VISIT_GAP_MICROS`]
/// after the latest begins a visit; one within it continues the visit. A view that arrives
/// late, before the first visit and apart from it, is an earlier first visit; a late one
/// between known views changes nothing but the latest view's time.
pub fn page_view(v: &Visits, at: i64, source: &str) -> Visits {
    let mut next = v.clone();
    if v.count == 0 {
        return Visits {
            count: 1,
            first_at: at,
            last_at: at,
            last_view_at: at,
            original_source: source.to_owned(),
            latest_source: source.to_owned(),
        };
    }
    if at > v.last_view_at + VISIT_GAP_MICROS {
        next.count += 1;
        next.last_at = at;
        next.latest_source = source.to_owned();
    } else if at < v.first_at - VISIT_GAP_MICROS {
        next.count += 1;
        next.first_at = at;
        next.original_source = source.to_owned();
    }
    next.last_view_at = v.last_view_at.max(at);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60 * 1_000_000;

    fn views(events: &[(i64, &str)]) -> Visits {
        events.iter().fold(Visits::default(), |v, (at, s)| page_view(&v, *at, s))
    }

    #[test]
    fn views_half_an_hour_apart_are_separate_visits() {
        let v = views(&[(0, "ORGANIC_SEARCH"), (10 * MIN, "DIRECT"), (25 * MIN, "DIRECT")]);
        assert_eq!((v.count, v.first_at, v.last_at), (1, 0, 0), "one visit of three views");
        assert_eq!(
            (v.original_source.as_str(), v.latest_source.as_str()),
            ("ORGANIC_SEARCH", "ORGANIC_SEARCH")
        );
        let v = page_view(&v, 25 * MIN + 30 * MIN + 1, "EMAIL");
        assert_eq!((v.count, v.last_at, v.latest_source.as_str()), (2, 55 * MIN + 1, "EMAIL"));
        assert_eq!(v.original_source, "ORGANIC_SEARCH", "the first visit's source stays");
        // Exactly at the gap still continues the visit.
        let v2 = page_view(&v, v.last_view_at + VISIT_GAP_MICROS, "SOCIAL");
        assert_eq!(v2.count, 2);
    }

    #[test]
    fn late_views_do_not_count_twice() {
        let v = views(&[(100 * MIN, "DIRECT"), (200 * MIN, "EMAIL")]);
        assert_eq!(v.count, 2);
        // A late view between the two: no visit of its own.
        assert_eq!(page_view(&v, 150 * MIN, "SOCIAL").count, 2);
        // A late view long before the first: an earlier first visit with its source.
        let early = page_view(&v, 10 * MIN, "PAID_SEARCH");
        assert_eq!(
            (early.count, early.first_at, early.original_source.as_str()),
            (3, 10 * MIN, "PAID_SEARCH")
        );
        assert_eq!((early.last_at, early.latest_source.as_str()), (200 * MIN, "EMAIL"));
    }
}
