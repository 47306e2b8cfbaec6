//! NotificationService: recipients, the alert feed and its watch stream, deliveries.

use crate::convert;
use crate::error::{Error, Result};
use crate::signing;
use crate::store::AlertRow;
use crate::store::{DEAD_LETTERED, RedriveResult, Store};
use crate::targets::{self, Allowed};
use crate::watch::{Full, Watchers};
use contactier_proto::notification::v1::{self as pb, notification_service_server::NotificationService};
use contactier_runtime::clock::{Clock, WorkerWaker};
use contactier_runtime::paging;
use contactier_runtime::request::account;
use std::pin::Pin;
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Webhook and email recipients one account may have.
pub const MAX_RECIPIENTS: i64 = 50;

pub struct Api {
    pub store: Store,
    pub clock: Clock,
    pub watchers: Watchers,
    /// Open watch streams end when the server shuts down, so clients reconnect elsewhere.
    pub shutdown: contactier_runtime::Shutdown,
    pub delivery: WorkerWaker,
    /// Where webhooks may go.
    pub allowed: Allowed,
}

/// A webhook URL's form, and the addresses its host resolves to now (checked again at every
/// delivery).
async fn check_webhook_url(url: &str, allowed: &Allowed) -> Result<()> {
    let checked = targets::webhook_url(url, allowed).map_err(|r| Error::invalid("webhook.url", r))?;
    if let Some(host) = &checked.host {
        crate::delivery::resolve(host, allowed).await.map_err(|e| {
            Error::invalid("webhook.url", format!("{e}; the host must resolve to public addresses"))
        })?;
    }
    Ok(())
}

#[tonic::async_trait]
impl NotificationService for Api {
    async fn create_recipient(
        &self,
        req: Request<pb::CreateRecipientRequest>,
    ) -> std::result::Result<Response<pb::CreateRecipientResponse>, Status> {
        let account = account(&req)?;
        if self.store.recipient_count(&account).await? >= MAX_RECIPIENTS {
            return Err(Error::quota_reached("recipients", MAX_RECIPIENTS).into());
        }
        let (kind, address, secret) = match req.into_inner().target {
            Some(pb::create_recipient_request::Target::Webhook(w)) => {
                check_webhook_url(&w.url, &self.allowed).await?;
                let secret = if w.secret.is_empty() { signing::new_secret() } else { w.secret };
                if signing::key(&secret).is_none() {
                    return Err(Error::invalid(
                        "webhook.secret",
                        "must be whsec_ and base64 of at least 16 bytes",
                    )
                    .into());
                }
                ("webhook", w.url, secret)
            }
            Some(pb::create_recipient_request::Target::Email(e)) => {
                let address = e
                    .address
                    .parse::<lettre::Address>()
                    .map_err(|_| Error::invalid("email.address", "not an email address"))?;
                targets::email_domain(address.domain()).map_err(|r| Error::invalid("email.address", r))?;
                ("email", e.address, String::new())
            }
            None => return Err(Error::invalid("target", "a webhook or an email is required").into()),
        };
        let row = self.store.create_recipient(&account, kind, &address, &secret, self.clock.now()).await?;
        Ok(Response::new(pb::CreateRecipientResponse { recipient: Some(convert::recipient(row, true)) }))
    }

    async fn list_recipients(
        &self,
        req: Request<pb::ListRecipientsRequest>,
    ) -> std::result::Result<Response<pb::ListRecipientsResponse>, Status> {
        let rows = self.store.list_recipients(&account(&req)?).await?;
        let all: Vec<pb::Recipient> = rows.into_iter().map(|r| convert::recipient(r, false)).collect();
        let r = req.get_ref();
        let (recipients, next_page_token) = contactier_runtime::paging::page(
            "recipients",
            all,
            |x| x.id.as_str(),
            r.page_size,
            &r.page_token,
        )?;
        Ok(Response::new(pb::ListRecipientsResponse { recipients, next_page_token }))
    }

    async fn delete_recipient(
        &self,
        req: Request<pb::DeleteRecipientRequest>,
    ) -> std::result::Result<Response<pb::DeleteRecipientResponse>, Status> {
        let account = account(&req)?;
        if !self.store.delete_recipient(&account, &req.into_inner().id).await? {
            return Err(Error::not_found("recipient").into());
        }
        Ok(Response::new(pb::DeleteRecipientResponse {}))
    }

    async fn list_alerts(
        &self,
        req: Request<pb::ListAlertsRequest>,
    ) -> std::result::Result<Response<pb::ListAlertsResponse>, Status> {
        let account = account(&req)?;
        let r = req.into_inner();
        let limit = paging::limit(r.page_size)?;
        let before = paging::after_number("alerts", &r.page_token)?;
        let mut rows = self.store.list_alerts(&account, before, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(a) if more => paging::token("alerts", &a.sequence.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: rows.into_iter().map(convert::alert).collect(),
            next_page_token,
        }))
    }

    type WatchAlertsStream =
        Pin<Box<dyn Stream<Item = std::result::Result<pb::WatchAlertsResponse, Status>> + Send>>;

    async fn watch_alerts(
        &self,
        req: Request<pb::WatchAlertsRequest>,
    ) -> std::result::Result<Response<Self::WatchAlertsStream>, Status> {
        let account = account(&req)?;
        let after = req.into_inner().after_sequence;
        if after < 0 {
            return Err(Error::invalid("after_sequence", "must not be negative").into());
        }
        // Watch before the first read, so an alert committed in between is not missed.
        let mut watching = self.watchers.watch(&account).map_err(|full| {
            let why = match full {
                Full::Account(n) => format!("this account has {n} open alert streams here, the most it may"),
                Full::Replica(n) => format!("this server holds {n} open alert streams, the most it may"),
            };
            Status::resource_exhausted(format!("{why}; close one or retry later"))
        })?;
        let store = self.store.clone();
        let shutdown = self.shutdown.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            // The database is the source of truth: the stream reads from it to catch up, at
            // the start and whenever it cannot tell from the channel that it missed nothing.
            let mut last = after;
            let mut catch_up = true;
            loop {
                while catch_up {
                    let rows = match store.alerts_after(&account, last, 200).await {
                        Ok(rows) => rows,
                        Err(e) => {
                            let _ = tx.send(Err(Status::from(e))).await;
                            return;
                        }
                    };
                    catch_up = !rows.is_empty();
                    for row in rows {
                        last = row.sequence;
                        if tx
                            .send(Ok(pb::WatchAlertsResponse { alert: Some(convert::alert(row)) }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                tokio::select! {
                    next = watching.alerts.recv() => match next {
                        Ok(row) if row.sequence <= last => {}
                        Ok(row) if row.sequence == last + 1 => {
                            last = row.sequence;
                            let alert = convert::alert(AlertRow::clone(&row));
                            if tx.send(Ok(pb::WatchAlertsResponse { alert: Some(alert) })).await.is_err() {
                                return;
                            }
                        }
                        // A gap (an alert another replica made, not yet seen here) or a
                        // channel that ran ahead of this stream: read what is missing.
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    () = tx.closed() => return,
                    () = shutdown.wait() => {
                        let going = "this server is shutting down; reconnect with the last sequence seen";
                        let _ = tx.send(Err(Status::unavailable(going))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_deliveries(
        &self,
        req: Request<pb::ListDeliveriesRequest>,
    ) -> std::result::Result<Response<pb::ListDeliveriesResponse>, Status> {
        let account = account(&req)?;
        let r = req.into_inner();
        let alert = (!r.alert_id.is_empty()).then_some(r.alert_id.as_str());
        let (deliveries, next_page_token) =
            self.deliveries(&account, alert, None, r.page_size, &r.page_token).await?;
        Ok(Response::new(pb::ListDeliveriesResponse { deliveries, next_page_token }))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> std::result::Result<Response<pb::ListDeadLettersResponse>, Status> {
        let account = account(&req)?;
        let r = req.into_inner();
        let (deliveries, next_page_token) =
            self.deliveries(&account, None, Some(DEAD_LETTERED), r.page_size, &r.page_token).await?;
        Ok(Response::new(pb::ListDeadLettersResponse { deliveries, next_page_token }))
    }

    async fn redrive_dead_letter(
        &self,
        req: Request<pb::RedriveDeadLetterRequest>,
    ) -> std::result::Result<Response<pb::RedriveDeadLetterResponse>, Status> {
        let account = account(&req)?;
        let id = req.into_inner().delivery_id;
        let (row, attempts, alert_ids) = match self.store.redrive(&account, &id, self.clock.now()).await? {
            RedriveResult::Requeued(requeued) => *requeued,
            RedriveResult::NotFound => return Err(Error::not_found("delivery").into()),
            RedriveResult::RecipientDeleted => {
                return Err(Error::FailedPrecondition(
                    "the delivery's recipient was deleted; there is nowhere to send it".into(),
                )
                .into());
            }
            RedriveResult::NotDeadLettered => {
                return Err(Error::FailedPrecondition(
                    "only a dead-lettered delivery can be redriven".into(),
                )
                .into());
            }
        };
        self.delivery.wake();
        Ok(Response::new(pb::RedriveDeadLetterResponse {
            delivery: Some(convert::delivery(row, attempts, alert_ids)),
        }))
    }
}

impl Api {
    async fn deliveries(
        &self,
        account: &str,
        alert: Option<&str>,
        state: Option<&str>,
        page_size: i32,
        token: &str,
    ) -> Result<(Vec<pb::Delivery>, String)> {
        let limit = paging::limit(page_size)?;
        // A token pages the list it came from: these deliveries (or dead letters), of this alert.
        let list = format!("{} {}", state.unwrap_or("deliveries"), alert.unwrap_or_default());
        let after = paging::after(&list, token)?;
        let mut rows = self.store.list_deliveries(account, alert, state, after.as_deref(), limit + 1).await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        let next = match rows.last() {
            Some(d) if more => paging::token(&list, &d.id),
            _ => String::new(),
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let attempts = self.store.attempts(account, &row.id).await?;
            let alert_ids = self.store.delivery_alert_ids(account, &row.id).await?;
            out.push(convert::delivery(row, attempts, alert_ids));
        }
        Ok((out, next))
    }
}
