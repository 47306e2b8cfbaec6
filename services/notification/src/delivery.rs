//! Sends each delivery to its recipient (signed webhook or email), at least once: retried
//! with exponential backoff and jitter, dead-lettered after a bounded number of tries.

use crate::signing;
use crate::store::{AlertRow, DeliveryRow, Outcome, RecipientRow, Store};
use contactier_runtime::clock::Worker;
use contactier_runtime::outbox::Backoff;
use contactier_runtime::shutdown::Shutdown;
use futures::StreamExt;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::time::Duration;

/// How long a worker holds a claimed delivery before another may take it over.
const LEASE: chrono::Duration = chrono::Duration::seconds(120);
const BATCH: i64 = 50;
/// Deliveries of a batch sent at once; with the webhook timeout this bounds a batch's time
/// well inside [`LEASE`].
const IN_FLIGHT: usize = 16;

/// Delivery settings, from the environment.
#[derive(clap::Args, Clone, Debug)]
pub struct DeliveryArgs {
    /// SMTP server for email recipients, e.g. `smtp://127.0.0.1:2525` or
    /// `smtps://user:pass@mail.example.com`. Email deliveries fail (and are retried) without it.
    #[arg(long, env = "CONTACTIER_SMTP_URL")]
    pub smtp_url: Option<String>,
    #[arg(long, env = "CONTACTIER_SMTP_FROM", default_value = "Contactier <alerts@contactier.invalid>")]
    pub smtp_from: String,
    /// Tries before a delivery is dead-lettered.
    #[arg(long, env = "CONTACTIER_DELIVERY_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: i32,
    /// First retry delay in milliseconds; it doubles per try up to five minutes.
    #[arg(long, env = "CONTACTIER_DELIVERY_BACKOFF_MS", default_value_t = 1000)]
    pub backoff_ms: u64,
    #[arg(long, env = "CONTACTIER_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
}

pub struct Sender {
    http: reqwest::Client,
    timeout_ms: u64,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: lettre::message::Mailbox,
}

impl Sender {
    pub fn new(args: &DeliveryArgs) -> anyhow::Result<Self> {
        // The HTTPS client needs a process-wide crypto provider; ring, as for gRPC TLS. Another
        // service in the same process may have installed it first.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(args.webhook_timeout_ms))
            .user_agent("Contactier-Webhooks/1")
            .build()?;
        let smtp = match &args.smtp_url {
            Some(url) => Some(AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?.build()),
            None => None,
        };
        let from = args.smtp_from.parse().map_err(|e| anyhow::anyhow!("CONTACTIER_SMTP_FROM: {e}"))?;
        Ok(Self { http, timeout_ms: args.webhook_timeout_ms, smtp, from })
    }

    /// One try. Answers the status code (HTTP or SMTP; 0 when there was no answer) and an error.
    async fn send(
        &self,
        delivery: &DeliveryRow,
        alert: &AlertRow,
        recipient: &RecipientRow,
    ) -> (i32, Option<String>) {
        match recipient.kind.as_str() {
            "webhook" => self.webhook(delivery, alert, recipient).await,
            "email" => self.email(alert, recipient).await,
            other => (0, Some(format!("unknown recipient kind {other}"))),
        }
    }

    async fn webhook(
        &self,
        delivery: &DeliveryRow,
        alert: &AlertRow,
        recipient: &RecipientRow,
    ) -> (i32, Option<String>) {
        let body = serde_json::to_vec(&payload(alert)).expect("JSON of plain values");
        // Wall-clock time: receivers check the timestamp against their own clocks.
        let timestamp = chrono::Utc::now().timestamp();
        let Some(signature) = signing::sign(&recipient.secret, &delivery.id, timestamp, &body) else {
            return (0, Some("recipient secret is not a whsec_ secret".into()));
        };
        let sent = self
            .http
            .post(&recipient.address)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => (i32::from(r.status().as_u16()), None),
            Ok(r) => (i32::from(r.status().as_u16()), Some(format!("receiver answered {}", r.status()))),
            Err(e) if e.is_timeout() => {
                (0, Some(format!("timed out: no answer within {} ms", self.timeout_ms)))
            }
            // Without the URL: it may carry credentials. The cause says what went wrong.
            Err(e) => {
                let cause = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
                (0, Some(format!("{}{cause}", e.without_url())))
            }
        }
    }

    async fn email(&self, alert: &AlertRow, recipient: &RecipientRow) -> (i32, Option<String>) {
        let Some(smtp) = &self.smtp else {
            return (0, Some("no SMTP server configured (CONTACTIER_SMTP_URL)".into()));
        };
        let to = match recipient.address.parse() {
            Ok(to) => to,
            Err(e) => return (0, Some(format!("bad address: {e}"))),
        };
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(format!("Contactier: {}", alert.alert.message))
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(format!(
                "{}\n\nAlert {} ({}) for account {}.\n",
                alert.alert.message, alert.id, alert.alert.kind, alert.account_id
            ));
        let message = match message {
            Ok(m) => m,
            Err(e) => return (0, Some(e.to_string())),
        };
        match smtp.send(message).await {
            Ok(r) => (r.code().to_string().parse().unwrap_or(250), None),
            Err(e) => {
                let code = e.status().and_then(|c| c.to_string().parse().ok()).unwrap_or(0);
                (code, Some(e.to_string()))
            }
        }
    }
}

/// The JSON body of a webhook: an event type and the alert.
pub fn payload(alert: &AlertRow) -> serde_json::Value {
    serde_json::json!({
        "type": format!("alert.{}", alert.alert.kind),
        "timestamp": chrono::DateTime::from_timestamp_micros(alert.created_at).map(|t| t.to_rfc3339()),
        "data": alert,
    })
}

/// The delivery worker: sends what is due, sleeps until the next retry or until new
/// deliveries wake it.
pub async fn run(store: Store, worker: Worker, sender: Sender, args: DeliveryArgs, shutdown: Shutdown) {
    let backoff = Backoff { initial: Duration::from_millis(args.backoff_ms), max: Duration::from_secs(300) };
    let (store, sender, args) = (&store, &sender, &args);
    worker
        .drive(shutdown, LEASE, move |now| async move {
            let batch = store.claim_due(now, LEASE, BATCH).await?;
            // A full batch means more may be due now: go round again at once.
            let full = batch.len() as i64 == BATCH;
            // Side by side: a receiver that never answers holds up only its own deliveries.
            futures::stream::iter(batch)
                .for_each_concurrent(IN_FLIGHT, |d| async move {
                    if let Err(e) = deliver(store, sender, &d, now, args, backoff).await {
                        tracing::warn!(delivery = %d.id, error = %e, "recording a delivery failed");
                    }
                })
                .await;
            if full { Ok(Some(now)) } else { store.next_due().await }
        })
        .await
}

async fn deliver(
    store: &Store,
    sender: &Sender,
    d: &DeliveryRow,
    now: chrono::DateTime<chrono::Utc>,
    args: &DeliveryArgs,
    backoff: Backoff,
) -> crate::error::Result<()> {
    let (alert, recipient) = (store.alert(&d.alert_id).await?, store.recipient(&d.recipient_id).await?);
    let (code, error) = match (&alert, &recipient) {
        (Some(a), Some(r)) => sender.send(d, a, r).await,
        (_, None) => {
            return store.record_attempt(d, now, 0, "recipient was deleted", Outcome::DeadLetter).await;
        }
        (None, _) => (0, Some("alert not found".to_owned())),
    };
    let outcome = match &error {
        None => Outcome::Delivered,
        Some(_) if d.attempts + 1 >= args.max_attempts => Outcome::DeadLetter,
        Some(_) => {
            let delay = chrono::Duration::from_std(backoff.delay(d.attempts)).unwrap_or(LEASE);
            Outcome::RetryAt(now + delay)
        }
    };
    // Ids and codes only: addresses and secrets stay out of logs.
    tracing::info!(delivery = %d.id, kind = recipient.as_ref().map(|r| r.kind.as_str()), code, ?outcome, "delivery attempt");
    store.record_attempt(d, now, code, error.as_deref().unwrap_or(""), outcome).await
}
