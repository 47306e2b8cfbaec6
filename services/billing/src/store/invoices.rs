//! Writing an invoice inside the transaction that decides it: the next gap-free number, the
//! row under its unique source key, and the notice for notification, all or nothing.

use super::{InvoiceRow, NOTIFICATION_TOPIC, day, notification_event};
use crate::error::Result;
use crate::model::Line;
use chrono::{DateTime, NaiveDate, Utc};
use contactier_proto::common::v1 as common;
use contactier_proto::notification::v1 as npb;
use contactier_runtime::convert::{micros, new_id};
use contactier_runtime::outbox::EventTx;
use prost::Message;

/// What an invoice charges, before it has a number.
pub struct NewInvoice<'a> {
    pub account: &'a str,
    /// Names what is charged ("upgrade:DATE", "renewal:DATE"); unique per account.
    pub source_key: String,
    pub kind: &'static str,
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
    ) -> impl Future<Output = Result<InvoiceRow>> + Send;
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

            async fn issue(&mut self, inv: NewInvoice<'_>, now: DateTime<Utc>) -> Result<InvoiceRow> {
                let number: i64 =
                    sqlx::query_scalar(NEXT_NUMBER).bind(inv.account).fetch_one(&mut *self).await?;
                let row = InvoiceRow {
                    id: new_id(),
                    number,
                    kind: inv.kind.to_owned(),
                    total_minor: inv.lines.iter().map(|l| l.amount_minor).sum(),
                    currency: inv.currency.to_owned(),
                    term_start: day(inv.term.0),
                    term_end: day(inv.term.1),
                    lines: serde_json::to_string(&inv.lines).expect("JSON of plain values"),
                    issued_at: micros(now),
                };
                // Counted as written; a rolled-back transaction (rare: a failure) overcounts.
                metrics::counter!("contactier_invoices_issued_total", "kind" => row.kind.clone()).increment(1);
                sqlx::query(INSERT)
                    .bind(inv.account)
                    .bind(&inv.source_key)
                    .bind(&row.id)
                    .bind(row.number)
                    .bind(&row.kind)
                    .bind(row.total_minor)
                    .bind(&row.currency)
                    .bind(&row.term_start)
                    .bind(&row.term_end)
                    .bind(&row.lines)
                    .bind(row.issued_at)
                    .execute(&mut *self)
                    .await?;
                let notice = npb::billing_event::Payload::Invoice(npb::InvoiceIssued {
                    invoice_id: row.id.clone(),
                    number: row.number,
                    total: Some(common::Money {
                        amount_minor: row.total_minor,
                        currency: row.currency.clone(),
                    }),
                });
                let ev = notification_event(inv.account, now, notice);
                self.enqueue(&ev.event_id, NOTIFICATION_TOPIC, inv.account, &ev.encode_to_vec(), now).await?;
                Ok(row)
            }
        }
    };
}

impl_invoice_tx!(sqlx::SqliteConnection);
impl_invoice_tx!(sqlx::PgConnection);
