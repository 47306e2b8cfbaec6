//! How many imports one account runs at once on a replica. Each running import holds up to a
//! batch of rows in memory (8 MiB of values) while its client sends; without a bound, one
//! account holding hundreds of imports open grew a replica by gigabytes, for every account on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Imports an account runs at once on one replica.
pub const PER_ACCOUNT: usize = 4;

#[derive(Clone, Default)]
pub struct Slots {
    running: Arc<Mutex<HashMap<String, usize>>>,
}

/// A running import's place; given back when dropped.
pub struct Slot {
    slots: Slots,
    account: String,
}

impl Slots {
    /// A place for one more import of `account`, if it runs fewer than [`PER_ACCOUNT`].
    pub fn take(&self, account: &str) -> Option<Slot> {
        let mut running = self.running.lock().expect("slots lock");
        let n = running.entry(account.to_owned()).or_default();
        if *n >= PER_ACCOUNT {
            return None;
        }
        *n += 1;
        Some(Slot { slots: self.clone(), account: account.to_owned() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self.slots.running.lock().expect("slots lock");
        if let Some(n) = running.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_runs_a_few_imports_at_once_and_others_are_not_held_by_it() {
        let slots = Slots::default();
        let held: Vec<Slot> = (0..PER_ACCOUNT).map(|_| slots.take("a").expect("a place")).collect();
        assert!(slots.take("a").is_none(), "one past the bound");
        let other = slots.take("b").expect("another account's place");
        drop(held.into_iter().next());
        assert!(slots.take("a").is_some(), "a place given back is taken again");
        drop(other);
        assert!(!slots.running.lock().unwrap().contains_key("b"), "an account with none is forgotten");
    }
}
