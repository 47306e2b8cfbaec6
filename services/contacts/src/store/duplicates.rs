//! Duplicate candidates' storage: each contact's match keys, written with its values, pairs
//! sharing a key found through their index, and the pairs a person dismissed.

use super::{ContactRow, Store};
use crate::duplicates::{self, Reason};
use crate::error::{Error, Result};
use contactier_runtime::sql::{Sql, Tx};
use std::collections::BTreeMap;

/// A pair of contacts that may be one person, with why and how sure (out of 100).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The smaller id first.
    pub a: String,
    pub b: String,
    pub reasons: Vec<Reason>,
    pub score: i32,
}

/// One page of candidates, and where the next begins (the last pair read).
pub struct CandidatePage {
    pub candidates: Vec<Candidate>,
    pub next: Option<(String, String)>,
}

const INSERT_KEY: &str =
    "INSERT INTO contact_match_keys (account_id, contact_id, reason, match_key) VALUES ($1, $2, $3, $4)";

/// Pairs sharing a key, by (a, b) after the pair given, each pair once per reason.
const PAIRS: &str = "SELECT k1.contact_id, k2.contact_id, k1.reason FROM contact_match_keys k1 \
     JOIN contact_match_keys k2 ON k2.account_id = k1.account_id AND k2.reason = k1.reason \
     AND k2.match_key = k1.match_key AND k2.contact_id > k1.contact_id \
     WHERE k1.account_id = $1 AND (k1.contact_id > $2 OR (k1.contact_id = $2 AND k2.contact_id > $3)) \
     AND NOT EXISTS (SELECT 1 FROM duplicate_dismissals d WHERE d.account_id = $1 \
     AND d.contact_a = k1.contact_id AND d.contact_b = k2.contact_id) \
     ORDER BY k1.contact_id, k2.contact_id, k1.reason LIMIT $4";

const DISMISS: &str = "INSERT INTO duplicate_dismissals (account_id, contact_a, contact_b, dismissed_by, \
     dismissed_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id, contact_a, contact_b) DO NOTHING";

/// Contacts whose keys are still to be written (from before keys were kept).
const UNKEYED: &str = "/* across accounts: contacts from before keys were kept */ SELECT account_id, id, email_key, properties FROM contacts \
     WHERE match_keys_version = 0 LIMIT $1";

/// Writes a contact's match keys anew from its email key and values.
pub(super) async fn write_keys(
    tx: &mut impl Tx,
    account: &str,
    contact: &str,
    email_key: &str,
    values: &BTreeMap<String, String>,
) -> Result<()> {
    let q = "DELETE FROM contact_match_keys WHERE account_id = $1 AND contact_id = $2";
    tx.execute(Sql::new(q).bind(account).bind(contact)).await?;
    for (reason, key) in duplicates::keys(email_key, values) {
        tx.execute(Sql::new(INSERT_KEY).bind(account).bind(contact).bind(reason.as_str()).bind(key)).await?;
    }
    let q = "UPDATE contacts SET match_keys_version = 1 WHERE account_id = $1 AND id = $2";
    tx.execute(Sql::new(q).bind(account).bind(contact)).await?;
    Ok(())
}

/// Forgets a removed contact's keys and the dismissals that name it.
pub(super) async fn forget_keys(tx: &mut impl Tx, account: &str, contact: &str) -> Result<()> {
    let q = "DELETE FROM contact_match_keys WHERE account_id = $1 AND contact_id = $2";
    tx.execute(Sql::new(q).bind(account).bind(contact)).await?;
    let q = "DELETE FROM duplicate_dismissals WHERE account_id = $1 AND (contact_a = $2 OR contact_b = $2)";
    tx.execute(Sql::new(q).bind(account).bind(contact)).await?;
    Ok(())
}

/// The email key of a contact row (keys are written from it).
pub(super) fn email_key(row: &ContactRow) -> String {
    row.email.to_lowercase()
}

impl Store {
    /// Candidates after the pair `after`, by pair, reading at most `limit` pairs; those under
    /// `min_score` are left out of the page but still move it on.
    pub async fn duplicate_candidates(
        &self,
        account: &str,
        after: Option<(String, String)>,
        limit: i64,
        min_score: i32,
    ) -> Result<CandidatePage> {
        let (a, b) = after.unwrap_or_default();
        // A pair has at most three reasons: enough rows for `limit` pairs and one more.
        let rows_wanted = (limit + 1) * 3;
        let q = Sql::new(PAIRS).bind(account).bind(a).bind(b).bind(rows_wanted);
        let rows: Vec<(String, String, String)> = self.db.fetch_all(q).await?;
        let full = rows.len() as i64 == rows_wanted;
        let mut pairs: Vec<Candidate> = Vec::new();
        for (a, b, reason) in rows {
            let Some(reason) = Reason::parse(&reason) else { continue };
            match pairs.last_mut() {
                Some(c) if c.a == a && c.b == b => c.reasons.push(reason),
                _ => pairs.push(Candidate { a, b, reasons: vec![reason], score: 0 }),
            }
        }
        // The last pair of a full read may have more reasons past it: it begins the next page.
        if full && pairs.len() > 1 {
            pairs.pop();
        }
        let more = full || pairs.len() as i64 > limit;
        pairs.truncate(limit as usize);
        let next = more.then(|| pairs.last().map(|c| (c.a.clone(), c.b.clone()))).flatten();
        for c in &mut pairs {
            c.score = duplicates::score(&c.reasons);
        }
        pairs.retain(|c| c.score >= min_score);
        Ok(CandidatePage { candidates: pairs, next })
    }

    /// Records that two contacts are not one person: they are no longer a candidate pair.
    /// NOT_FOUND when either is not the account's.
    pub async fn dismiss_duplicate(
        &self,
        account: &str,
        pair: (&str, &str),
        by: &str,
        at: i64,
    ) -> Result<()> {
        let (a, b) = if pair.0 < pair.1 { pair } else { (pair.1, pair.0) };
        let found = self.contacts(account, &[a.to_owned(), b.to_owned()]).await?;
        for id in [a, b] {
            if !found.iter().any(|c| c.id == id) {
                return Err(Error::no_contact(id));
            }
        }
        self.db.execute(Sql::new(DISMISS).bind(account).bind(a).bind(b).bind(by).bind(at)).await?;
        Ok(())
    }

    /// Writes the match keys of up to `limit` contacts from before keys were kept; answers
    /// how many it keyed (0: none left).
    pub async fn key_unkeyed_contacts(&self, limit: i64) -> Result<usize> {
        let rows: Vec<(String, String, String, String)> =
            self.db.fetch_all(Sql::new(UNKEYED).bind(limit)).await?;
        let mut tx = self.db.begin_write().await?;
        for (account, id, email_key, properties) in &rows {
            let values: BTreeMap<String, String> = serde_json::from_str(properties).unwrap_or_default();
            write_keys(&mut tx, account, id, email_key, &values).await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }
}
