//! Page sizes and page tokens of every list RPC keyed by a unique, sorted key, and pages of a
//! small, bounded set read whole (an account's properties, workflows, recipients).
//!
//! A page token names the list it pages and the last key of the page before, encoded so a
//! client treats it as opaque: a token of another list, or anything else, is refused as
//! INVALID_ARGUMENT `page_token` rather than read as "no more items".

use crate::error::Error;
use base64::Engine as _;

const TOKENS: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The token of the page after `key` in `list` (a name unique to the RPC, e.g. "lists").
pub fn token(list: &str, key: &str) -> String {
    TOKENS.encode(format!("{list}\n{key}"))
}

/// The key a page of `list` starts after: None for the first page (an empty token).
pub fn after(list: &str, token: &str) -> Result<Option<String>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    let refused = || Error::invalid("page_token", format!("not a page token of {list}"));
    let bytes = TOKENS.decode(token).map_err(|_| refused())?;
    let text = String::from_utf8(bytes).map_err(|_| refused())?;
    match text.split_once('\n') {
        Some((l, key)) if l == list && !key.is_empty() => Ok(Some(key.to_owned())),
        _ => Err(refused()),
    }
}

/// Items a page holds when the caller names no size.
pub const DEFAULT_PAGE: i32 = 100;
/// The most items a page holds.
pub const MAX_PAGE: i32 = 1_000;

/// How many of the leading items (their sizes in `sizes`) a page of at most `budget` bytes
/// holds: the first always, however large, so that paging goes on.
pub fn fitting(sizes: impl IntoIterator<Item = usize>, budget: usize) -> usize {
    let mut total = 0usize;
    let mut n = 0;
    for size in sizes {
        total = total.saturating_add(size);
        if n > 0 && total > budget {
            break;
        }
        n += 1;
    }
    n
}

/// Bytes of values a page holds at most, whatever its page size: under the 4 MiB message a
/// gRPC client takes by default, with room for the rest of each entry.
pub const PAGE_BYTES: usize = 3 << 20;

/// [`trim`] that also ends the page once its items' `size`s pass `budget` bytes (the first
/// item always stays). Items the read left out past the budget come after the last one kept,
/// so the token leads to them, as long as `size` counts at least what the read counted.
pub fn trim_bytes<T>(
    mut rows: Vec<T>,
    limit: i64,
    budget: usize,
    size: impl Fn(&T) -> usize,
    next: impl Fn(&T) -> String,
) -> (Vec<T>, String) {
    let keep = fitting(rows.iter().map(size), budget).min(limit.max(0) as usize);
    let more = rows.len() > keep;
    rows.truncate(keep);
    let token = match rows.last() {
        Some(r) if more => next(r),
        _ => String::new(),
    };
    (rows, token)
}

/// The items a page of `page_size` holds (0: [`DEFAULT_PAGE`]); None when out of range.
pub fn size(page_size: i32) -> Option<usize> {
    match page_size {
        0 => Some(DEFAULT_PAGE as usize),
        n if (1..=MAX_PAGE).contains(&n) => Some(n as usize),
        _ => None,
    }
}

/// [`size`] as a query limit, or INVALID_ARGUMENT `page_size`.
pub fn limit(page_size: i32) -> Result<i64, Error> {
    size(page_size)
        .map(|n| n as i64)
        .ok_or_else(|| Error::invalid("page_size", format!("0 (the default, {DEFAULT_PAGE}) to {MAX_PAGE}")))
}

/// [`after`] for lists keyed by a number (a sequence, an invoice number).
pub fn after_number(list: &str, token: &str) -> Result<Option<i64>, Error> {
    after(list, token)?
        .map(|k| k.parse().map_err(|_| Error::invalid("page_token", format!("not a page token of {list}"))))
        .transpose()
}

/// The token of the page after an entry keyed by a number and an id (a time and the entry's
/// id, a row and a column), for lists where the number alone is not unique.
pub fn token_at(list: &str, n: i64, id: &str) -> String {
    token(list, &format!("{n}/{id}"))
}

/// The (number, id) a page of `list` starts after, from a [`token_at`] token.
pub fn after_at(list: &str, token: &str) -> Result<Option<(i64, String)>, Error> {
    after(list, token)?
        .map(|k| {
            k.split_once('/')
                .and_then(|(n, id)| Some((n.parse::<i64>().ok().filter(|n| *n >= 0)?, id.to_owned())))
                .ok_or_else(|| Error::invalid("page_token", format!("not a page token of {list}")))
        })
        .transpose()
}

/// Ends a page read with one row more than `limit` (the way every list RPC reads, so the last
/// page needs no token): keeps `limit` rows, and makes the next page's token from the last
/// one kept when there were more.
pub fn trim<T>(rows: Vec<T>, limit: i64, next: impl Fn(&T) -> String) -> (Vec<T>, String) {
    trim_bytes(rows, limit, usize::MAX, |_| 0, next)
}

/// The page of `list`'s `items` after `page_token` of at most `page_size` (0:
/// [`DEFAULT_PAGE`]), and the token of the next page (empty on the last); Err names the field
/// that is out of range.
pub fn page<T>(
    list: &str,
    mut items: Vec<T>,
    key: impl Fn(&T) -> &str,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<T>, String), Error> {
    let size = limit(page_size)? as usize;
    let after = after(list, page_token)?;
    items.sort_by(|a, b| key(a).cmp(key(b)));
    if let Some(after) = after {
        items.retain(|x| key(x) > after.as_str());
    }
    let more = items.len() > size;
    items.truncate(size);
    let next =
        if more { items.last().map(|x| token(list, key(x))).unwrap_or_default() } else { String::new() };
    Ok((items, next))
}

/// [`page`] over a small set with an order of its own (the price book's editions, the
/// configured subsidiaries, the sources): keyed by position, so pages keep that order.
pub fn page_in_order<T>(
    list: &str,
    items: Vec<T>,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<T>, String), Error> {
    let keyed = items.into_iter().enumerate().map(|(i, x)| (format!("{i:06}"), x)).collect();
    let (items, next) = page(list, keyed, |(k, _)| k.as_str(), page_size, page_token)?;
    Ok((items.into_iter().map(|(_, x)| x).collect(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_cut_by_bytes_has_a_token_from_its_last_item() {
        let token = |n: &usize| n.to_string();
        assert_eq!(trim_bytes(vec![4, 4, 4], 10, 10, |n| *n, token), (vec![4, 4], "4".to_owned()));
        // What the read left out past the budget: the items it sent pass the budget, and the
        // page ends before that.
        assert_eq!(trim_bytes(vec![6, 6], 10, 10, |n| *n, token), (vec![6], "6".to_owned()));
        assert_eq!(trim_bytes(vec![4, 4], 10, 10, |n| *n, token), (vec![4, 4], String::new()));
        assert_eq!(trim_bytes(vec![1, 1, 1], 2, 10, |n| *n, token), (vec![1, 1], "1".to_owned()));
    }

    #[test]
    fn a_page_by_bytes_holds_what_fits_and_always_its_first_item() {
        assert_eq!(fitting([], 10), 0);
        assert_eq!(fitting([4, 4, 2, 1], 10), 3, "4 + 4 + 2 is the budget exactly");
        assert_eq!(fitting([4, 4, 3], 10), 2);
        assert_eq!(fitting([11, 1], 10), 1, "the first alone is past the budget: it is sent");
        assert_eq!(fitting([usize::MAX, usize::MAX], 10), 1);
    }

    #[test]
    fn a_page_read_with_one_more_row_has_a_token_only_when_more_follow() {
        let next = |n: &i32| n.to_string();
        assert_eq!(trim(vec![1, 2, 3], 2, next), (vec![1, 2], "2".to_owned()));
        assert_eq!(trim(vec![1, 2], 2, next), (vec![1, 2], String::new()), "a full last page");
        assert_eq!(trim(Vec::<i32>::new(), 2, next), (vec![], String::new()));
    }

    #[test]
    fn pages_of_an_ordered_set_keep_its_order() {
        let items = vec!["starter", "professional", "enterprise"];
        let (a, t) = page_in_order("editions", items.clone(), 2, "").unwrap();
        assert_eq!(a, ["starter", "professional"]);
        let (b, t) = page_in_order("editions", items.clone(), 2, &t).unwrap();
        assert_eq!((b, t.as_str()), (vec!["enterprise"], ""));
        assert!(page_in_order("subsidiaries", items, 2, &token("editions", "000001")).is_err());
    }

    #[test]
    fn pages_follow_one_another_to_the_end() {
        let items: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
        let (a, t) = page("things", items.clone(), |s| s.as_str(), 2, "").unwrap();
        assert_eq!(a, ["k0", "k1"]);
        let (b, t) = page("things", items.clone(), |s| s.as_str(), 2, &t).unwrap();
        assert_eq!(b, ["k2", "k3"]);
        let (c, t) = page("things", items.clone(), |s| s.as_str(), 2, &t).unwrap();
        assert_eq!((c, t.as_str()), (vec!["k4".to_owned()], ""));
        assert_eq!(page("things", items, |s| s.as_str(), 1_001, "").unwrap_err().field(), "page_size");
    }

    #[test]
    fn a_token_is_good_for_its_own_list_only_and_garbage_is_refused() {
        let t = token("lists", "l-42");
        assert_eq!(after("lists", &t).unwrap().as_deref(), Some("l-42"));
        assert_eq!(after("lists", "").unwrap(), None);
        let at = token_at("changes", 17, "c-1/x");
        assert_eq!(after_at("changes", &at).unwrap(), Some((17, "c-1/x".to_owned())));
        for bad in [token("changes", "x/c-1"), token("changes", "-5/c-1"), token_at("lists", 1, "c")] {
            assert!(after_at("changes", &bad).is_err(), "{bad}");
        }
        for bad in
            [token("memberships", "l-42"), "garbage".into(), "l-42".into(), token("lists", ""), "%%%".into()]
        {
            let e = tonic::Status::from(after("lists", &bad).unwrap_err());
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().starts_with("page_token: "), "{}", e.message());
        }
    }
}
