//! The watchers of alert feeds on one replica. Every WatchAlerts stream of an account shares one
//! channel of that account's new alerts; alerts made here are handed to it as they commit, and
//! one poller per replica looks in the database once a second for the watched accounts' alerts
//! made by other replicas (one statement for all of them), so the database work does not grow
//! with the number of streams. Streams are capped per account and per replica.

use crate::store::{AlertRow, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// How often the poller looks for alerts made by other replicas.
const POLL: Duration = Duration::from_secs(1);
/// Alerts an account's channel holds for a slow stream before it must read them again.
const CHANNEL: usize = 256;

/// Caps on open WatchAlerts streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchLimits {
    pub per_account: usize,
    pub per_replica: usize,
}

struct Account {
    tx: broadcast::Sender<Arc<AlertRow>>,
    streams: usize,
    /// The highest sequence handed to the channel.
    last: i64,
}

#[derive(Default)]
struct Inner {
    accounts: HashMap<String, Account>,
    streams: usize,
}

/// The replica's watchers.
#[derive(Clone)]
pub struct Watchers {
    inner: Arc<Mutex<Inner>>,
    limits: WatchLimits,
}

/// An open stream's place; dropping it frees the place.
pub struct Watching {
    watchers: Watchers,
    account: String,
    pub alerts: broadcast::Receiver<Arc<AlertRow>>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut inner = self.watchers.inner.lock().expect("watchers");
        inner.streams -= 1;
        if let Some(a) = inner.accounts.get_mut(&self.account) {
            a.streams -= 1;
            if a.streams == 0 {
                inner.accounts.remove(&self.account);
            }
        }
    }
}

/// Why a stream was not opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    Account(usize),
    Replica(usize),
}

impl Watchers {
    pub fn new(limits: WatchLimits) -> Self {
        Self { inner: Arc::default(), limits }
    }

    /// Opens a stream of `account`'s alerts, if the caps allow one more.
    pub fn watch(&self, account: &str) -> Result<Watching, Full> {
        let mut inner = self.inner.lock().expect("watchers");
        if inner.streams >= self.limits.per_replica {
            return Err(Full::Replica(self.limits.per_replica));
        }
        let a = inner.accounts.entry(account.to_owned()).or_insert_with(|| Account {
            tx: broadcast::channel(CHANNEL).0,
            streams: 0,
            last: 0,
        });
        if a.streams >= self.limits.per_account {
            let (per_account, empty) = (self.limits.per_account, a.streams == 0);
            if empty {
                inner.accounts.remove(account);
            }
            return Err(Full::Account(per_account));
        }
        a.streams += 1;
        let alerts = a.tx.subscribe();
        inner.streams += 1;
        Ok(Watching { watchers: self.clone(), account: account.to_owned(), alerts })
    }

    /// Hands new alerts of an account to its streams, in sequence order.
    pub fn publish(&self, rows: &[AlertRow]) {
        let mut inner = self.inner.lock().expect("watchers");
        for row in rows {
            if let Some(a) = inner.accounts.get_mut(&row.account_id) {
                a.last = a.last.max(row.sequence);
                // No receiver left is fine: the last stream just went.
                let _ = a.tx.send(Arc::new(row.clone()));
            }
        }
    }

    /// The watched accounts with the last sequence handed to each.
    fn watched(&self) -> Vec<(String, i64)> {
        let inner = self.inner.lock().expect("watchers");
        inner.accounts.iter().map(|(k, a)| (k.clone(), a.last)).collect()
    }

    fn seen(&self, account: &str, sequence: i64) {
        if let Some(a) = self.inner.lock().expect("watchers").accounts.get_mut(account) {
            a.last = a.last.max(sequence);
        }
    }

    /// Open streams on this replica.
    pub fn streams(&self) -> usize {
        self.inner.lock().expect("watchers").streams
    }

    /// Once a second: the watched accounts' alerts made since the last look, by any replica,
    /// handed to their streams.
    pub async fn poll(self, store: Store, shutdown: contactier_runtime::Shutdown) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = shutdown.wait() => return,
            }
            let watched = self.watched();
            if watched.is_empty() {
                continue;
            }
            let accounts: Vec<String> = watched.iter().map(|(a, _)| a.clone()).collect();
            let latest = match store.last_sequences(&accounts).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "looking for new alerts failed");
                    continue;
                }
            };
            for (account, known) in watched {
                let Some(&newest) = latest.get(&account) else { continue };
                if newest <= known {
                    continue;
                }
                match store.alerts_after(&account, known, 200).await {
                    Ok(rows) => {
                        self.publish(&rows);
                        if let Some(last) = rows.last() {
                            self.seen(&account, last.sequence);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading new alerts failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_account_and_per_replica_and_places_come_back() {
        let w = Watchers::new(WatchLimits { per_account: 2, per_replica: 3 });
        let a1 = w.watch("a").unwrap();
        let _a2 = w.watch("a").unwrap();
        assert_eq!(w.watch("a").err(), Some(Full::Account(2)));
        let _b1 = w.watch("b").unwrap();
        assert_eq!(w.watch("c").err(), Some(Full::Replica(3)));
        drop(a1);
        assert_eq!(w.streams(), 2);
        let _c1 = w.watch("c").unwrap();
        assert_eq!(w.watched().len(), 3);
    }
}
