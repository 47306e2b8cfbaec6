//! Writing an invoice inside the transaction that decides it: the next gap-free number, the
//! row under its unique source key, and the notice for notification, all or nothing.

use super::{NOTIFICATION_TOPIC, day};
use crate::convert::{billing_event, invoice_issued};
use crate::error::Result;
use crate::model::{Invoice, InvoiceKind, Line};
use chrono::{DateTime, NaiveDate, Utc};
use contactier_runtime::convert::{micros, new_id};
use contactier_runtime::db::Db;
use contactier_runtime::outbox::EventTx;
use contactier_runtime::sql::{Sql, Tx};
use prost::Message;
use sqlx::AssertSqlSafe;
use std::collections::{HashMap, HashSet};

/// What an invoice charges, before it has a number.
pub struct NewInvoice<'a> {
    pub account: &'a str,
    /// Names what is charged ("upgrade:DATE", "renewal:DATE"); unique per account.
    pub source_key: String,
    pub kind: InvoiceKind,
    pub currency: &'a str,
    pub term: (NaiveDate, NaiveDate),
    pub lines: Vec<Line>,
}

/// Which of these (account, source key) pairs have an invoice: one read by key for them all.
pub async fn invoiced_many(
    tx: &mut impl Tx,
    db: &Db,
    keys: &[(&str, &str)],
) -> Result<HashSet<(String, String)>> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let accounts: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let sources: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let q = format!(
        "SELECT account_id, source_key FROM invoices WHERE {} AND {}",
        db.json_in("account_id", 1),
        db.json_in("source_key", 2)
    );
    let json = |v: Vec<&str>| serde_json::to_string(&v).expect("JSON of strings");
    let q = Sql::new(AssertSqlSafe(q)).bind(json(accounts)).bind(json(sources));
    let asked: HashSet<(&str, &str)> = keys.iter().copied().collect();
    let found: Vec<(String, String)> = tx.fetch_all(q).await?;
    Ok(found.into_iter().filter(|(a, k)| asked.contains(&(a.as_str(), k.as_str()))).collect())
}

/// Issues invoices of distinct accounts, each under its account's next number with its notice
/// for notification, with one statement each for the numbers, the invoices and the notices,
/// however many. Answers them in the order given.
pub async fn issue_many(
    tx: &mut impl Tx,
    db: &Db,
    invs: Vec<NewInvoice<'_>>,
    now: DateTime<Utc>,
) -> Result<Vec<Invoice>> {
    if invs.is_empty() {
        return Ok(vec![]);
    }
    // Accounts in order, so two runs take the counters' locks in one order.
    let mut accounts: Vec<&str> = invs.iter().map(|i| i.account).collect();
    accounts.sort_unstable();
    let x = db.json_records(1, &[("acct", "text")]);
    let records: Vec<serde_json::Value> = accounts.iter().map(|a| serde_json::json!({ "acct": a })).collect();
    // `WHERE true`: SQLite reads an ON CONFLICT after a bare SELECT ... FROM as a join's.
    let q = format!(
        "INSERT INTO invoice_counters (account_id, last_number) SELECT acct, 1 FROM {x} WHERE true \
         ON CONFLICT (account_id) DO UPDATE SET last_number = invoice_counters.last_number + 1 \
         RETURNING account_id, last_number"
    );
    let q = Sql::new(AssertSqlSafe(q)).bind(serde_json::Value::Array(records).to_string());
    let numbers: HashMap<String, i64> = tx.fetch_all::<(String, i64)>(q).await?.into_iter().collect();
    let mut rows = Vec::with_capacity(invs.len());
    let mut issued = Vec::with_capacity(invs.len());
    let mut events = Vec::with_capacity(invs.len());
    for inv in invs {
        let invoice = Invoice {
            id: new_id(),
            number: numbers[inv.account],
            kind: inv.kind,
            total_minor: inv.lines.iter().map(|l| l.amount_minor).sum(),
            currency: inv.currency.to_owned(),
            term_start: inv.term.0,
            term_end: inv.term.1,
            lines: inv.lines,
            issued_at: micros(now),
        };
        // Counted as written; a rolled-back transaction (rare: a failure) overcounts.
        metrics::counter!("contactier_invoices_issued_total", "kind" => invoice.kind.as_str()).increment(1);
        rows.push(serde_json::json!({
            "acct": inv.account, "source_key": inv.source_key, "id": invoice.id, "number": invoice.number,
            "kind": invoice.kind.as_str(), "total": invoice.total_minor, "currency": invoice.currency,
            "term_start": day(invoice.term_start), "term_end": day(invoice.term_end),
            "lines": serde_json::to_string(&invoice.lines).expect("JSON of plain values"),
        }));
        let ev = billing_event(inv.account, now, invoice_issued(&invoice));
        events.push((ev.event_id.clone(), inv.account.to_owned(), ev.encode_to_vec()));
        issued.push(invoice);
    }
    let x = db.json_records(
        1,
        &[
            ("acct", "text"),
            ("source_key", "text"),
            ("id", "text"),
            ("number", "bigint"),
            ("kind", "text"),
            ("total", "bigint"),
            ("currency", "text"),
            ("term_start", "text"),
            ("term_end", "text"),
            ("lines", "text"),
        ],
    );
    let q = format!(
        "INSERT INTO invoices (account_id, source_key, id, number, kind, total_minor, currency, term_start, \
         term_end, lines, issued_at) SELECT acct, source_key, id, number, kind, total, currency, term_start, \
         term_end, lines, $2 FROM {x}"
    );
    let q = Sql::new(AssertSqlSafe(q)).bind(serde_json::Value::Array(rows).to_string()).bind(micros(now));
    tx.execute(q).await?;
    tx.enqueue_many(NOTIFICATION_TOPIC, &events, now).await?;
    Ok(issued)
}
