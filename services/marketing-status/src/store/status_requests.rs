//! Status requests over many contacts: each one's outcome by the rules, written set-based in
//! one transaction with the audit entries and the new count.

use super::{Actor, Keep, Outcomes, SAVE_RESPONSE, SetOutcome, Store, status_str};
use super::{
    add_counts, announce_counts, apply_delta, counts, held_since, hold_counts, hold_mark, stamp_after,
};
use crate::rules::{self, CountDelta, Outcome, State, Status};
use chrono::{DateTime, Utc};
use contactier_runtime::convert::{micros, new_id};
use contactier_runtime::db::Db;
use contactier_runtime::outbox::new_event_id;
use contactier_runtime::sql::{Sql, Tx};
use sqlx::AssertSqlSafe;
use std::collections::{HashMap, HashSet};

/// A request's effect on the contacts named, from their states before it.
struct Plan<'a> {
    /// Per contact in the order named; None when unknown.
    outcomes: Outcomes,
    /// (contact, from, to) of each contact that changes, once each.
    changes: Vec<(&'a String, State, State)>,
    total: CountDelta,
}

fn plan<'a>(contacts: &'a [String], before: &HashMap<String, State>, requested: Status) -> Plan<'a> {
    let mut p = Plan {
        outcomes: Vec::with_capacity(contacts.len()),
        changes: Vec::new(),
        total: CountDelta::default(),
    };
    let mut seen = HashSet::new();
    for id in contacts {
        let Some(&from) = before.get(id) else {
            p.outcomes.push((id.clone(), None));
            continue;
        };
        let (to, outcome) = rules::request(from, requested);
        // A contact named twice changes once; the second sees the first's result.
        if outcome != Outcome::Unchanged && seen.insert(id) {
            p.changes.push((id, from, to));
            p.total += CountDelta::between(from, to);
            p.outcomes.push((id.clone(), Some(outcome)));
        } else {
            p.outcomes.push((id.clone(), Some(Outcome::Unchanged)));
        }
    }
    p
}

/// The rules for one request as rows for SQL: each state it changes and what that becomes.
fn transitions(requested: Status) -> String {
    let rows: Vec<serde_json::Value> = [State::MARKETING, State::PENDING, State::NON_MARKETING]
        .into_iter()
        .filter_map(|from| {
            let (to, outcome) = rules::request(from, requested);
            (outcome != Outcome::Unchanged).then(|| {
                serde_json::json!({
                    "from_m": from.counts(), "from_p": from.until_next_update,
                    "to_m": to.counts(), "to_p": to.until_next_update,
                    "from_status": status_str(from.status), "to_status": status_str(to.status),
                })
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// Where one call of [`Store::set_status`] sits in the caller's request.
pub struct Part<'a> {
    /// With it, the answer it builds is saved under its request id in the same transaction, so
    /// a retry gets exactly this answer; if a concurrent twin saved first, nothing is changed
    /// and its answer is returned instead.
    pub keep: Option<&'a Keep<'a>>,
    /// False for a part of a bulk change that more parts follow: its count is held back from
    /// billing until the last part.
    pub last: bool,
}

#[cfg(test)]
impl Part<'_> {
    /// The whole request in one call, answer not kept.
    pub const WHOLE: Part<'static> = Part { keep: None, last: true };
}

impl Store {
    /// Applies a status request to each contact; answers each one's outcome (None: unknown).
    pub async fn set_status(
        &self,
        account: &str,
        contacts: &[String],
        requested: Status,
        actor: &Actor,
        now: DateTime<Utc>,
        part: Part<'_>,
    ) -> Result<SetOutcome, sqlx::Error> {
        let Part { keep, last } = part;
        let wanted = serde_json::to_string(contacts).expect("strings");
        let mut tx = self.db.begin_write().await?;
        let at = stamp_after(micros(now), hold_mark(&self.db, &mut tx, account, &wanted).await?);
        // Each found contact's state before the request. PostgreSQL writes the changes in the
        // same statement; SQLite writes them below, from the plan.
        let before: Vec<(String, bool, bool)> = match self.db {
            Db::Postgres(_) => {
                let q = Sql::new(AssertSqlSafe(self.request_statement()))
                    .bind(account)
                    .bind(transitions(requested))
                    .bind(&wanted)
                    .bind(&actor.source_type)
                    .bind(&actor.source_id)
                    .bind(at)
                    .bind(format!("{}:", new_id()))
                    .bind(&actor.user_id)
                    .bind(&actor.request_id);
                tx.fetch_all(q).await?
            }
            Db::Sqlite(_) => {
                let read = format!(
                    "SELECT contact_id, marketing, pending FROM contact_status WHERE account_id = $1 AND {}",
                    self.db.json_in("contact_id", 2)
                );
                tx.fetch_all(Sql::new(AssertSqlSafe(read)).bind(account).bind(&wanted)).await?
            }
        };
        let before = before.into_iter().map(|(id, m, p)| (id, super::state(m, p))).collect();
        let p = plan(contacts, &before, requested);
        if let Db::Sqlite(_) = self.db {
            self.write_plan(&mut tx, account, &p, actor, at).await?;
        }
        let counts = if p.total.is_zero() {
            counts(&mut tx, account).await?
        } else if last {
            apply_delta(&mut tx, account, p.total, now).await?
        } else {
            // A part of a bulk change: billing hears of the count once, after its last part.
            let c = add_counts(&mut tx, account, p.total, now).await?;
            hold_counts(&mut tx, account, now).await?;
            c
        };
        // The last part changed nothing itself, but earlier parts may be held.
        if last && p.total.is_zero() && held_since(&mut tx, account).await?.is_some() {
            announce_counts(&mut tx, account, counts, now).await?;
        }
        if let Some(keep) = keep {
            let answer = (keep.answer)(&p.outcomes, &counts);
            let save =
                Sql::new(SAVE_RESPONSE).bind(account).bind(keep.request_id).bind(&answer).bind(keep.digest);
            if tx.execute(save).await? != 1 {
                drop(tx);
                let (first, digest) =
                    self.saved_response(account, keep.request_id).await?.ok_or(sqlx::Error::RowNotFound)?;
                return Ok(SetOutcome::Replayed(first, digest));
            }
        }
        tx.commit().await?;
        if !last {
            self.held();
        }
        Ok(SetOutcome::Done(p.outcomes, counts))
    }

    /// SQLite: writes a plan's changes, one statement per state they reach, and their audit
    /// entries in one statement.
    async fn write_plan(
        &self,
        tx: &mut impl Tx,
        account: &str,
        p: &Plan<'_>,
        actor: &Actor,
        at: i64,
    ) -> Result<(), sqlx::Error> {
        let update = format!(
            "UPDATE contact_status SET marketing = $1, pending = $2, source_type = $3, source_id = $4, \
             updated_at = $5 WHERE account_id = $6 AND {}",
            self.db.json_in("contact_id", 7)
        );
        let mut targets: Vec<State> = p.changes.iter().map(|c| c.2).collect();
        targets.sort_by_key(|s| (s.counts(), s.until_next_update));
        targets.dedup();
        for to in targets {
            let ids: Vec<&String> = p.changes.iter().filter(|c| c.2 == to).map(|c| c.0).collect();
            let q = Sql::new(AssertSqlSafe(update.as_str()))
                .bind(to.counts())
                .bind(to.until_next_update)
                .bind(&actor.source_type)
                .bind(&actor.source_id)
                .bind(at)
                .bind(account)
                .bind(serde_json::to_string(&ids).expect("strings"));
            tx.execute(q).await?;
        }
        if p.changes.is_empty() {
            return Ok(());
        }
        let columns = [
            ("id", "text"),
            ("contact_id", "text"),
            ("from_status", "text"),
            ("to_status", "text"),
            ("pending", "boolean"),
        ];
        let audit = format!(
            "INSERT INTO status_changes (account_id, id, contact_id, from_status, to_status, pending, \
             source_type, source_id, user_id, requested_at, effective_at, request_id) \
             SELECT $1, x.id, x.contact_id, x.from_status, x.to_status, x.pending, $3, $4, $5, $6, $6, $7 \
             FROM {}",
            self.db.json_records(2, &columns)
        );
        let entries: Vec<serde_json::Value> = p
            .changes
            .iter()
            .map(|(id, from, to)| {
                serde_json::json!({
                    "id": new_event_id(), "contact_id": id, "from_status": status_str(from.status),
                    "to_status": status_str(to.status), "pending": to.until_next_update,
                })
            })
            .collect();
        let q = Sql::new(AssertSqlSafe(audit))
            .bind(account)
            .bind(serde_json::Value::Array(entries).to_string())
            .bind(&actor.source_type)
            .bind(&actor.source_id)
            .bind(&actor.user_id)
            .bind(at)
            .bind(&actor.request_id);
        tx.execute(q).await?;
        Ok(())
    }

    /// PostgreSQL: one statement locks the named contacts (in key order, as every status
    /// writer does, so writers of the same contacts take turns and never wait in a circle),
    /// changes those the rules change, writes their audit entries, and answers each found
    /// contact's state before the request. $1 account, $2 [`transitions`], $3 the contacts,
    /// $4 source type, $5 source id, $6 time, $7 audit id prefix, $8 user, $9 request id.
    fn request_statement(&self) -> String {
        format!(
            "WITH t AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS t(from_m boolean, \
             from_p boolean, to_m boolean, to_p boolean, from_status text, to_status text)), \
             locked AS (SELECT contact_id, marketing, pending FROM contact_status \
             WHERE account_id = $1 AND {} ORDER BY contact_id FOR UPDATE), \
             changed AS (UPDATE contact_status AS s SET marketing = t.to_m, pending = t.to_p, \
             source_type = $4, source_id = $5, updated_at = $6 FROM locked AS l \
             JOIN t ON t.from_m = l.marketing AND t.from_p = l.pending \
             WHERE s.account_id = $1 AND s.contact_id = l.contact_id \
             RETURNING s.contact_id, t.from_status, t.to_status, t.to_p), \
             audited AS (INSERT INTO status_changes (account_id, id, contact_id, from_status, \
             to_status, pending, source_type, source_id, user_id, requested_at, effective_at, request_id) \
             SELECT $1, $7 || contact_id, contact_id, from_status, to_status, to_p, $4, $5, $8, $6, $6, $9 \
             FROM changed) \
             SELECT contact_id, marketing, pending FROM locked",
            self.db.json_in("contact_id", 3)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contactier_runtime::db::Backend;

    #[test]
    fn each_contact_named_gets_its_outcome_and_changes_once() {
        let named: Vec<String> = ["a", "x", "b", "a", "c"].map(String::from).to_vec();
        let before: HashMap<String, State> =
            [("a", State::NON_MARKETING), ("b", State::PENDING), ("c", State::MARKETING)]
                .map(|(id, s)| (id.to_owned(), s))
                .into();
        let p = plan(&named, &before, Status::Marketing);
        let outcomes: Vec<Option<Outcome>> = p.outcomes.iter().map(|o| o.1).collect();
        assert_eq!(
            outcomes,
            [
                Some(Outcome::BecameMarketing),
                None,
                Some(Outcome::PendingCleared),
                Some(Outcome::Unchanged),
                Some(Outcome::Unchanged)
            ]
        );
        assert_eq!(p.changes.len(), 2);
        assert_eq!(p.total, CountDelta { marketing: 1, pending: -1, non_marketing: -1 });
    }

    #[test]
    fn the_rows_for_sql_are_the_rules() {
        for requested in [Status::Marketing, Status::NonMarketing] {
            let rows: Vec<serde_json::Value> = serde_json::from_str(&transitions(requested)).unwrap();
            for from in [State::MARKETING, State::PENDING, State::NON_MARKETING] {
                let (to, outcome) = rules::request(from, requested);
                let row = rows
                    .iter()
                    .find(|r| r["from_m"] == from.counts() && r["from_p"] == from.until_next_update);
                match row {
                    None => assert_eq!(outcome, Outcome::Unchanged, "{requested:?} {from:?}"),
                    Some(r) => {
                        assert_eq!(
                            (r["to_m"].as_bool(), r["to_p"].as_bool()),
                            (Some(to.counts()), Some(to.until_next_update))
                        );
                        assert_eq!(r["to_status"], status_str(to.status));
                    }
                }
            }
        }
    }

    /// A bulk change whose caller never sends its last part still reaches billing, once, a
    /// minute after its first part.
    async fn a_held_count_is_announced_when_its_change_is_abandoned(backend: Backend) {
        use crate::store::{BILLING_TOPIC, HOLD_LIMIT};
        use chrono::TimeZone;
        use contactier_runtime::outbox::Outbox;
        use contactier_runtime::testing::TestDb;
        let t = TestDb::new(backend, "marketing-status").await;
        t.db.migrate_service(crate::SERVICE.migrations).await.unwrap();
        let s = Store::new(t.db.clone());
        let outbox = Outbox::new(t.db.clone(), BILLING_TOPIC);
        let now = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
        let actor = Actor {
            source_type: "USER".into(),
            source_id: "u1".into(),
            user_id: "u1".into(),
            request_id: String::new(),
        };
        let ids: Vec<String> = (0..3).map(|i| format!("c{i}")).collect();
        let items: Vec<_> = ids
            .iter()
            .map(|id| crate::store::Created {
                event_id: format!("ev-{id}"),
                contact_id: id.clone(),
                initial: State::NON_MARKETING,
                actor: actor.clone(),
            })
            .collect();
        s.contacts_created("a", &items, &[], now).await.unwrap();
        let announced = outbox.pending().await.unwrap();
        s.set_status("a", &ids[..2], Status::Marketing, &actor, now, Part { keep: None, last: false })
            .await
            .unwrap();
        assert_eq!(outbox.pending().await.unwrap(), announced, "{backend:?}: held");
        let (released, next) = s.release_stale_holds(now + chrono::Duration::seconds(30)).await.unwrap();
        assert_eq!((released, next), (0, Some(now + HOLD_LIMIT)), "{backend:?}: not yet");
        let (released, _) = s.release_stale_holds(now + HOLD_LIMIT).await.unwrap();
        assert_eq!(released, 1, "{backend:?}");
        assert_eq!(outbox.pending().await.unwrap(), announced + 1, "{backend:?}: announced once");
        let (released, _) = s.release_stale_holds(now + HOLD_LIMIT * 2).await.unwrap();
        assert_eq!(released, 0, "{backend:?}: and only once");
    }

    contactier_runtime::backend_tests!(a_held_count_is_announced_when_its_change_is_abandoned,);
}
