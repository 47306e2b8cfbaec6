//! Writing an invoice inside the transaction that decides it: the next gap-free number, the
//! row under its unique source key, and the notice for notification, all or nothing.

use super::{NOTIFICATION_TOPIC, day};
use crate::convert::{billing_event, invoice_issued};
use crate::error::Result;
use crate::model::{Invoice, InvoiceKind, Line};
use chrono::{DateTime, NaiveDate, Utc};
use contactier_runtime::convert::{micros, new_id};
use contactier_runtime::outbox::EventTx;
use prost::Message;

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

pub trait InvoiceTx {
    /// Whether the account has an invoice under `source_key`.
    fn invoiced(&mut self, account: &str, source_key: &str) -> impl Future<Output = Result<bool>> + Send;
    fn issue(
        &mut self,
        inv: NewInvoice<'_>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Invoice>> + Send;
}

const INSERT: &str = "INSERT INTO invoices (account_id, source_key, id, number, kind, total_minor, currency, \
     term_start, term_end, lines, issued_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
const NEXT_NUMBER: &str = "INSERT INTO invoice_counters (account_id, last_number) VALUES ($1, 1) \
     ON CONFLICT (account_id) DO UPDATE SET last_number = invoice_counters.last_number + 1 RETURNING last_number";

macro_rules! impl_invoice_tx {
    ($conn:ty) => {
        impl InvoiceTx for $conn {
            async fn invoiced(&mut self, account: &str, source_key: &str) -> Result<bool> {
                let id: Option<String> =
                    sqlx::query_scalar("SELECT id FROM invoices WHERE account_id = $1 AND source_key = $2")
                        .bind(account)
                        .bind(source_key)
                        .fetch_optional(&mut *self)
                        .await?;
                Ok(id.is_some())
            }

            async fn issue(&mut self, inv: NewInvoice<'_>, now: DateTime<Utc>) -> Result<Invoice> {
                let number: i64 =
                    sqlx::query_scalar(NEXT_NUMBER).bind(inv.account).fetch_one(&mut *self).await?;
                let invoice = Invoice {
                    id: new_id(),
                    number,
                    kind: inv.kind,
                    total_minor: inv.lines.iter().map(|l| l.amount_minor).sum(),
                    currency: inv.currency.to_owned(),
                    term_start: inv.term.0,
                    term_end: inv.term.1,
                    lines: inv.lines,
                    issued_at: micros(now),
                };
                let lines = serde_json::to_string(&invoice.lines).expect("JSON of plain values");
                // Counted as written; a rolled-back transaction (rare: a failure) overcounts.
                metrics::counter!("contactier_invoices_issued_total", "kind" => invoice.kind.as_str())
                    .increment(1);
                sqlx::query(INSERT)
                    .bind(inv.account)
                    .bind(&inv.source_key)
                    .bind(&invoice.id)
                    .bind(invoice.number)
                    .bind(invoice.kind.as_str())
                    .bind(invoice.total_minor)
                    .bind(&invoice.currency)
                    .bind(day(invoice.term_start))
                    .bind(day(invoice.term_end))
                    .bind(&lines)
                    .bind(invoice.issued_at)
                    .execute(&mut *self)
                    .await?;
                let ev = billing_event(inv.account, now, invoice_issued(&invoice));
                self.enqueue(&ev.event_id, NOTIFICATION_TOPIC, inv.account, &ev.encode_to_vec(), now).await?;
                Ok(invoice)
            }
        }
    };
}

impl_invoice_tx!(sqlx::SqliteConnection);
impl_invoice_tx!(sqlx::PgConnection);
