//! Setting a status for many contacts: in chunks of [`MAX_CONTACTS_PER_CALL`] a transaction,
//! each contact's outcome by the rules, and the answer kept under the request id.

use crate::convert::pb_counts;
use crate::rules::{Outcome, Status};
use crate::store::{Actor, Counts, Keep, Outcomes, Part, SetOutcome, Store};
use chrono::{DateTime, Utc};
use contactier_proto::marketing_status::v1 as pb;
use contactier_runtime::idempotency::{self, Key};
use prost::Message;

/// The most contacts one transaction changes (and one call may name by id).
pub const MAX_CONTACTS_PER_CALL: usize = 10_000;

/// Adds a chunk's outcomes to an answer; per-contact results only when `per_contact`.
fn add(answer: &mut pb::SetMarketingStatusResponse, outcomes: &Outcomes, counts: &Counts, per_contact: bool) {
    for (contact_id, o) in outcomes {
        let outcome = match o {
            None => {
                answer.not_found += 1;
                pb::SetStatusOutcome::NotFound
            }
            Some(Outcome::Unchanged) => {
                answer.unchanged += 1;
                pb::SetStatusOutcome::Unchanged
            }
            Some(Outcome::PendingSet) => {
                answer.changed += 1;
                pb::SetStatusOutcome::PendingNonMarketing
            }
            Some(Outcome::BecameMarketing | Outcome::PendingCleared) => {
                answer.changed += 1;
                pb::SetStatusOutcome::Marketing
            }
        };
        if per_contact {
            answer
                .results
                .push(pb::SetStatusResult { contact_id: contact_id.clone(), outcome: outcome as i32 });
        }
    }
    answer.count = Some(pb_counts(*counts));
}

/// Applies `wanted` to `ids`. A single chunk keeps its answer in its own transaction; a longer
/// run keeps it after the last chunk (a retry then re-applies, which changes nothing more).
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    store: &Store,
    account: &str,
    ids: &[String],
    per_contact: bool,
    wanted: Status,
    actor: &Actor,
    key: &Key,
    now: DateTime<Utc>,
) -> Result<pb::SetMarketingStatusResponse, Failed> {
    let mut answer = pb::SetMarketingStatusResponse::default();
    let chunks: Vec<&[String]> = ids.chunks(MAX_CONTACTS_PER_CALL).collect();
    if chunks.is_empty() {
        answer.count = Some(pb_counts(store.counts(account).await?));
    }
    let single = chunks.len() == 1;
    let parts = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let build = |o: &Outcomes, c: &Counts| {
            let mut a = pb::SetMarketingStatusResponse::default();
            add(&mut a, o, c, per_contact);
            a.encode_to_vec()
        };
        let keep = Keep { request_id: &key.id, digest: &key.digest, answer: &build };
        let keep = (single && !key.is_none()).then_some(&keep);
        match store
            .set_status(account, chunk, wanted, actor, now, Part { keep, last: i + 1 == parts })
            .await?
        {
            SetOutcome::Done(outcomes, counts) => add(&mut answer, &outcomes, &counts, per_contact),
            SetOutcome::Replayed(_, digest) if !idempotency::same(&digest, &key.digest) => {
                return Err(Failed::Reused);
            }
            SetOutcome::Replayed(first, _) => {
                return Ok(pb::SetMarketingStatusResponse::decode(first.as_slice()).unwrap_or_default());
            }
        }
    }
    if !single && !key.is_none() {
        store.save_response(account, &key.id, &key.digest, &answer.encode_to_vec()).await?;
    }
    Ok(answer)
}

/// Why a status request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum Failed {
    #[error("storage: {0}")]
    Db(#[from] sqlx::Error),
    /// Its request id was used for a different request.
    #[error("request_id: already used for a different request")]
    Reused,
}

impl From<Failed> for tonic::Status {
    fn from(f: Failed) -> Self {
        match f {
            Failed::Db(e) => contactier_runtime::db::storage_status(&e),
            Failed::Reused => idempotency::reused(),
        }
    }
}

/// Announces to billing the counts of bulk changes left unfinished (see `store::HOLD_LIMIT`).
pub async fn release_holds(
    store: Store,
    relay: contactier_runtime::clock::WorkerWaker,
    worker: contactier_runtime::clock::Worker,
    shutdown: contactier_runtime::shutdown::Shutdown,
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
        .await;
}
