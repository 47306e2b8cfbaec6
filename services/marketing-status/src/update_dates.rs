//! The update-date worker: rewrites, in the background, the contacts of applied update dates (see
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
        .await;
}
