//! Rewrites, in the background, the contacts of applied update dates (see
//! `store::update_dates`): woken when a date is applied, and at start for any left unfinished.

use crate::store::Store;
use contactier_runtime::clock::Worker;
use contactier_runtime::shutdown::Shutdown;

pub async fn run(store: Store, worker: Worker, shutdown: Shutdown) {
    let store = &store;
    worker
        .drive(shutdown, chrono::Duration::seconds(5), move |_| async move {
            for account in store.marked_accounts().await? {
                store.rewrite(&account).await?;
            }
            Ok::<_, sqlx::Error>(None)
        })
        .await
}

/// Announces to billing the counts of bulk changes left unfinished (see `store::HOLD_LIMIT`).
pub async fn release_holds(
    store: Store,
    relay: contactier_runtime::clock::WorkerWaker,
    worker: Worker,
    shutdown: Shutdown,
) {
    let store = &store;
    let relay = &relay;
    worker
        .drive(shutdown, chrono::Duration::seconds(5), move |now| async move {
            let (released, next) = store.release_stale_holds(now).await?;
            if released > 0 {
                relay.wake();
            }
            Ok::<_, sqlx::Error>(next)
        })
        .await
}
