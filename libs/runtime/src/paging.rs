//! Pages of a small, bounded set read whole (an account's properties, workflows, recipients):
//! sorted by a unique key, a page token is the last key of the page before.

/// Items a page holds when the caller names no size.
pub const DEFAULT_PAGE: i32 = 100;
/// The most items a page holds.
pub const MAX_PAGE: i32 = 1_000;

/// The items a page of `page_size` holds (0: [`DEFAULT_PAGE`]); None when out of range.
pub fn size(page_size: i32) -> Option<usize> {
    match page_size {
        0 => Some(DEFAULT_PAGE as usize),
        n if (1..=MAX_PAGE).contains(&n) => Some(n as usize),
        _ => None,
    }
}

/// The page of `items` after `token` of at most `page_size` (0: [`DEFAULT_PAGE`]), and the
/// token of the next page (empty on the last); Err names the field that is out of range.
pub fn page<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> &str,
    page_size: i32,
    token: &str,
) -> Result<(Vec<T>, String), tonic::Status> {
    let size = size(page_size)
        .ok_or_else(|| tonic::Status::invalid_argument(format!("page_size: 1 to {MAX_PAGE}")))?;
    items.sort_by(|a, b| key(a).cmp(key(b)));
    if !token.is_empty() {
        items.retain(|x| key(x) > token);
    }
    let more = items.len() > size;
    items.truncate(size);
    let next = if more { items.last().map(|x| key(x).to_owned()).unwrap_or_default() } else { String::new() };
    Ok((items, next))
}

#[cfg(test)]
mod tests {
    use super::page;

    #[test]
    fn pages_follow_one_another_to_the_end() {
        let items: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
        let (a, t) = page(items.clone(), |s| s.as_str(), 2, "").unwrap();
        assert_eq!((a, t.as_str()), (vec!["k0".to_owned(), "k1".into()], "k1"));
        let (b, t) = page(items.clone(), |s| s.as_str(), 2, &t).unwrap();
        assert_eq!((b, t.as_str()), (vec!["k2".to_owned(), "k3".into()], "k3"));
        let (c, t) = page(items.clone(), |s| s.as_str(), 2, &t).unwrap();
        assert_eq!((c, t.as_str()), (vec!["k4".to_owned()], ""));
        assert!(page(items, |s| s.as_str(), 1_001, "").unwrap_err().message().starts_with("page_size"));
    }
}
