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

/// The accounts of one call whose items failed, each named by its first item with why. A call
/// that applied nothing fails whole, with the first account's status, when it was one
/// account's or when any of its accounts met its storage not there: to its sender an outage
/// still reads as one. Several accounts refused each for its own reason (rows another session
/// holds, say) are answered each: a call failed whole was sent again in halves down to each
/// account (500 accounts held: 47 events became 92 calls, seen from outside).
#[derive(Default)]
pub struct Refusals(Vec<(String, String, tonic::Status)>);

impl Refusals {
    /// `account`'s items failed with `status`: named by its first, `item`, and logged with both
    /// (the storage error's own line names neither). The reason names the item too: a sender
    /// may list it under another id (the batch holding it), and operators match the two by it.
    pub fn add(&mut self, account: &str, item: &str, status: tonic::Status) {
        tracing::warn!(account = %account, event = %item, error = %status, "an account's events were not applied");
        self.0.push((account.to_owned(), item.to_owned(), Self::named(item, status)));
    }

    /// `status` naming `item`, its details kept.
    pub(crate) fn named(item: &str, status: tonic::Status) -> tonic::Status {
        let message = format!("event {item}: {}", status.message());
        tonic::Status::with_details(status.code(), message, status.details().to_vec().into())
    }

    /// Whether `account`'s items failed in this call.
    pub fn has(&self, account: &str) -> bool {
        self.0.iter().any(|(a, ..)| a == account)
    }

    /// The answer to a call that acknowledged `acknowledged` items: each item refused with its
    /// `google.rpc.Status`, or the first account's status when nothing was acknowledged and the
    /// call was one account's or met its storage not there.
    pub fn answer(
        mut self,
        acknowledged: usize,
    ) -> Result<Vec<(String, tonic_types::pb::Status)>, tonic::Status> {
        let whole = self.0.len() == 1 || self.0.iter().any(|(.., s)| crate::outbox::unanswered_status(s));
        if !self.0.is_empty() && acknowledged == 0 && whole {
            return Err(self.0.swap_remove(0).2);
        }
        Ok(self.0.into_iter().map(|(_, item, s)| (item, crate::rich::rpc_status(s))).collect())
    }
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

    #[test]
    fn a_call_fails_whole_only_when_nothing_was_acknowledged() {
        let mut some = Refusals::default();
        some.add("b", "b1", tonic::Status::internal("refused"));
        assert!(some.has("b") && !some.has("a"));
        let named = some.answer(1).unwrap();
        let named: Vec<_> = named.iter().map(|(i, s)| (i.as_str(), s.code, s.message.as_str())).collect();
        assert_eq!(named, [("b1", 13, "event b1: refused")], "named in the reason too");
        let mut all = Refusals::default();
        all.add("a", "a1", tonic::Status::unavailable("down"));
        all.add("b", "b1", tonic::Status::internal("refused"));
        let whole = all.answer(0).unwrap_err();
        assert_eq!(
            (whole.code(), whole.message()),
            (tonic::Code::Unavailable, "event a1: down"),
            "the first's"
        );
        assert!(Refusals::default().answer(0).unwrap().is_empty());

        // Several accounts each refused for its own reason are answered each, nothing
        // acknowledged; one account alone still fails whole.
        let mut held = Refusals::default();
        held.add("a", "a1", tonic::Status::aborted("held up"));
        held.add("b", "b1", tonic::Status::internal("refused"));
        let named = held.answer(0).expect("answered each");
        let named: Vec<_> = named.iter().map(|(i, s)| (i.as_str(), s.code)).collect();
        assert_eq!(named, [("a1", 10), ("b1", 13)]);
        let mut alone = Refusals::default();
        alone.add("a", "a1", tonic::Status::aborted("held up"));
        assert_eq!(alone.answer(0).unwrap_err().code(), tonic::Code::Aborted);
    }
}
