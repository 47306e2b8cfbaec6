//! Several accounts' items in one call, grouped so that each account's go together, in their
//! order: each account is applied (or fails) on its own.

use std::collections::HashMap;

/// `items` by account, each account's in the order given, the accounts in the order first seen.
pub fn by_account<T>(
    items: impl IntoIterator<Item = T>,
    account: impl Fn(&T) -> &str,
) -> Vec<(String, Vec<T>)> {
    let mut groups: Vec<(String, Vec<T>)> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for item in items {
        let key = account(&item);
        let i = if let Some(i) = at.get(key) {
            *i
        } else {
            at.insert(key.to_owned(), groups.len());
            groups.push((key.to_owned(), Vec::new()));
            groups.len() - 1
        };
        groups[i].1.push(item);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_go_by_account_each_in_its_order() {
        let items = [("1", "a"), ("2", "b"), ("3", "a"), ("4", "c"), ("5", "b")];
        let groups: Vec<(String, Vec<&str>)> = by_account(items, |i| i.1)
            .into_iter()
            .map(|(a, is)| (a, is.into_iter().map(|i| i.0).collect()))
            .collect();
        let want = |a: &str, ids: &[&'static str]| (a.to_owned(), ids.to_vec());
        assert_eq!(groups, [want("a", &["1", "3"]), want("b", &["2", "5"]), want("c", &["4"])]);
        assert!(by_account(Vec::<(&str, &str)>::new(), |i| i.1).is_empty());
    }
}
