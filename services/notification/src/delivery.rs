//! Sends each delivery to its recipient (signed webhook or email), at least once: retried
//! with exponential backoff and jitter, dead-lettered after a bounded number of tries.

use crate::signing;
use crate::store::{AlertRow, DeliveryRow, Outcome, RecipientRow, Store};
use crate::targets::{self, Allowed};
use contactier_runtime::clock::Worker;
use contactier_runtime::outbox::Backoff;
use contactier_runtime::shutdown::Shutdown;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::collections::HashMap;
use std::time::Duration;

/// How long a worker holds a claimed delivery before another may take it over.
const LEASE: chrono::Duration = chrono::Duration::seconds(120);
/// Deliveries sent at once; each takes at most the webhook timeout, well inside [`LEASE`].
const IN_FLIGHT: usize = 16;
/// Deliveries of one account in flight at once.
const PER_ACCOUNT: i64 = 4;
pub const WORKER: &str = "notification-delivery";

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
    /// Plain http webhooks, for development; production takes https only.
    #[arg(long, env = "CONTACTIER_WEBHOOK_ALLOW_HTTP", default_value_t = false)]
    pub webhook_allow_http: bool,
    /// Internal address ranges webhooks may reach (comma-separated CIDRs), for on-premise
    /// receivers; every other loopback, private, link-local or reserved address is refused.
    #[arg(long, env = "CONTACTIER_WEBHOOK_ALLOW_RANGES", value_delimiter = ',')]
    pub webhook_allow_ranges: Vec<ipnet::IpNet>,
    /// Milliseconds alerts of one account gather into one delivery (a digest) per webhook and
    /// email recipient; 0 sends one delivery per alert.
    #[arg(long, env = "CONTACTIER_DIGEST_WINDOW_MS", default_value_t = 5_000)]
    pub digest_window_ms: u64,
    /// Open WatchAlerts streams one account may hold on one replica.
    #[arg(long, env = "CONTACTIER_WATCH_STREAMS_PER_ACCOUNT", default_value_t = 50)]
    pub watch_streams_per_account: usize,
    /// Open WatchAlerts streams one replica holds.
    #[arg(long, env = "CONTACTIER_WATCH_STREAMS", default_value_t = 5_000)]
    pub watch_streams: usize,
}

impl DeliveryArgs {
    pub fn watch_limits(&self) -> crate::watch::WatchLimits {
        crate::watch::WatchLimits {
            per_account: self.watch_streams_per_account,
            per_replica: self.watch_streams,
        }
    }

    /// Where webhooks may go.
    pub fn allowed(&self) -> Allowed {
        Allowed { http: self.webhook_allow_http, ranges: self.webhook_allow_ranges.clone() }
    }
}

/// Resolves a webhook's host for its connection and refuses it when any address it resolves
/// to is not allowed: the connection goes to the addresses checked here, so a name cannot
/// resolve to a public address when checked and an internal one when used.
struct CheckedResolver(Allowed);

#[derive(Debug, thiserror::Error)]
#[error("{}", targets::INTERNAL)]
struct Refused;

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolve(&host, &allowed).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The addresses of `host`, all of them allowed; refused when any is not.
pub async fn resolve(
    host: &str,
    allowed: &Allowed,
) -> Result<Vec<std::net::SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    if addrs.is_empty() || addrs.iter().any(|a| !allowed.ip(a.ip())) {
        return Err(Box::new(Refused));
    }
    Ok(addrs)
}

/// What one try came to.
#[derive(Debug, Default)]
struct Tried {
    /// HTTP status or SMTP reply code; 0 when there was no answer.
    code: i32,
    /// What the tenant sees of a failure.
    error: Option<String>,
    /// What operators see of it, when it says more than `error`.
    cause: Option<String>,
}

impl Tried {
    fn answered(code: i32, error: Option<String>) -> Self {
        Self { code, error, cause: None }
    }
}

pub struct Sender {
    http: reqwest::Client,
    allowed: Allowed,
    timeout_ms: u64,
    smtp: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: lettre::message::Mailbox,
}

impl Sender {
    pub fn new(args: &DeliveryArgs) -> anyhow::Result<Self> {
        // The HTTPS client needs a process-wide crypto provider; ring, as for gRPC TLS. Another
        // service in the same process may have installed it first.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let allowed = args.allowed();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(args.webhook_timeout_ms))
            .user_agent("Contactier-Webhooks/1")
            // A redirect could lead anywhere; a proxy would connect where we did not check.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(CheckedResolver(allowed.clone())))
            .build()?;
        let smtp = match &args.smtp_url {
            Some(url) => Some(AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?.build()),
            None => None,
        };
        let from = args.smtp_from.parse().map_err(|e| anyhow::anyhow!("CONTACTIER_SMTP_FROM: {e}"))?;
        Ok(Self { http, allowed, timeout_ms: args.webhook_timeout_ms, smtp, from })
    }

    /// One try.
    async fn send(&self, delivery: &DeliveryRow, alerts: &[AlertRow], recipient: &RecipientRow) -> Tried {
        match recipient.kind.as_str() {
            "webhook" => self.webhook(delivery, alerts, recipient).await,
            "email" => {
                let (code, error) = self.email(alerts, recipient).await;
                Tried::answered(code, error)
            }
            other => Tried::answered(0, Some(format!("unknown recipient kind {other}"))),
        }
    }

    async fn webhook(&self, delivery: &DeliveryRow, alerts: &[AlertRow], recipient: &RecipientRow) -> Tried {
        // Checked again at every delivery: the allow-list may have changed since the recipient
        // was made. A host name is checked as it is resolved for the connection.
        let url = match targets::webhook_url(&recipient.address, &self.allowed) {
            Ok(u) => u.url,
            Err(reason) => return Tried::answered(0, Some(format!("webhook URL refused: {reason}"))),
        };
        let started = tokio::time::Instant::now();
        let body = serde_json::to_vec(&payload(alerts)).expect("JSON of plain values");
        // Wall-clock time: receivers check the timestamp against their own clocks.
        let timestamp = chrono::Utc::now().timestamp();
        let Some(signature) = signing::sign(&recipient.secret, &delivery.id, timestamp, &body) else {
            return Tried::answered(0, Some("recipient secret is not a whsec_ secret".into()));
        };
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Tried::answered(i32::from(r.status().as_u16()), None),
            Ok(r) => Tried::answered(
                i32::from(r.status().as_u16()),
                Some(format!("receiver answered {}", r.status())),
            ),
            Err(e) if is_refused(&e) => {
                Tried::answered(0, Some(format!("webhook URL refused: {}", targets::INTERNAL)))
            }
            // One answer for every way of not getting one, taking the same time: a tenant must
            // not learn which ports of a network are closed, filtered or slow. Operators see
            // the cause in the failing work and the log.
            Err(e) => {
                let source = std::error::Error::source(&e).map(|c| format!(": {c}")).unwrap_or_default();
                let cause = format!("{}{source}", e.without_url());
                tracing::info!(delivery = %delivery.id, error = %cause, "webhook not answered");
                tokio::time::sleep_until(started + Duration::from_millis(self.timeout_ms)).await;
                Tried {
                    code: 0,
                    error: Some(format!("no answer from the receiver within {} ms", self.timeout_ms)),
                    cause: Some(cause),
                }
            }
        }
    }

    async fn email(&self, alerts: &[AlertRow], recipient: &RecipientRow) -> (i32, Option<String>) {
        let Some(smtp) = &self.smtp else {
            return (0, Some("no SMTP server configured (CONTACTIER_SMTP_URL)".into()));
        };
        let to = match recipient.address.parse() {
            Ok(to) => to,
            Err(e) => return (0, Some(format!("bad address: {e}"))),
        };
        let subject = match alerts {
            [one] => format!("Contactier: {}", one.alert.message),
            many => format!("Contactier: {} alerts", many.len()),
        };
        let body: String = alerts
            .iter()
            .map(|a| {
                format!(
                    "{}\n  Alert {} ({}) for account {}.\n",
                    a.alert.message, a.id, a.alert.kind, a.account_id
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(body);
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

/// Whether the request failed because its host resolved to an address that is not allowed.
fn is_refused(e: &reqwest::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<Refused>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The JSON body of a webhook: every alert of the delivery, in the order they fired.
pub fn payload(alerts: &[AlertRow]) -> serde_json::Value {
    let first = alerts.first();
    serde_json::json!({
        "type": "alerts",
        "timestamp": first.and_then(|a| chrono::DateTime::from_timestamp_micros(a.created_at)).map(|t| t.to_rfc3339()),
        "data": {
            "account_id": first.map(|a| a.account_id.as_str()),
            "alerts": alerts,
        },
    })
}

/// The delivery worker: sends what is due, sleeps until the next retry or until new
/// deliveries wake it.
pub async fn run(store: Store, worker: Worker, sender: Sender, args: DeliveryArgs, shutdown: Shutdown) {
    let backoff = Backoff { initial: Duration::from_millis(args.backoff_ms), max: Duration::from_secs(300) };
    let (sender, args) = (std::sync::Arc::new(sender), std::sync::Arc::new(args));
    let (store, sender, args) = (&store, &sender, &args);
    worker
        .drive(shutdown, LEASE, move |now| async move {
            // Each delivery its own task, taken as places free up: a receiver that never answers
            // holds up only its own account's deliveries, of which at most PER_ACCOUNT are in
            // flight, and an attempt being recorded never waits for the loop.
            let mut running = tokio::task::JoinSet::new();
            let mut in_flight: HashMap<String, i64> = HashMap::new();
            loop {
                let mut claimed_any = false;
                if running.len() < IN_FLIGHT {
                    let busy: Vec<String> = in_flight
                        .iter()
                        .filter(|(_, n)| **n >= PER_ACCOUNT)
                        .map(|(a, _)| a.clone())
                        .collect();
                    let room = (IN_FLIGHT - running.len()) as i64;
                    for d in store.claim_due(now, LEASE, room, PER_ACCOUNT, &busy).await? {
                        claimed_any = true;
                        *in_flight.entry(d.account_id.clone()).or_default() += 1;
                        let (store, sender, args) = (store.clone(), sender.clone(), args.clone());
                        running.spawn(async move {
                            if let Err(e) = deliver(&store, &sender, &d, now, &args, backoff).await {
                                tracing::warn!(delivery = %d.id, error = %e, "recording a delivery failed");
                            }
                            d.account_id
                        });
                    }
                }
                if claimed_any && running.len() < IN_FLIGHT {
                    continue;
                }
                match running.join_next().await {
                    Some(Ok(account)) => {
                        if let Some(n) = in_flight.get_mut(&account) {
                            *n -= 1;
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "a delivery task ended early"),
                    None => break,
                }
            }
            store.next_due().await
        })
        .await;
}

async fn deliver(
    store: &Store,
    sender: &Sender,
    d: &DeliveryRow,
    now: chrono::DateTime<chrono::Utc>,
    args: &DeliveryArgs,
    backoff: Backoff,
) -> crate::error::Result<()> {
    let alerts = store.delivery_alerts(&d.account_id, &d.id).await?;
    let recipient = store.recipient(&d.account_id, &d.recipient_id).await?;
    let Tried { code, error, cause } = match &recipient {
        Some(r) if !alerts.is_empty() => sender.send(d, &alerts, r).await,
        None => {
            let gone = ("recipient was deleted", "");
            count_attempt("unknown", &Outcome::DeadLetter);
            return store.record_attempt(d, now, 0, gone, Outcome::DeadLetter).await;
        }
        Some(_) => Tried::answered(0, Some("alert not found".to_owned())),
    };
    if let Some(e) = &error {
        let why = cause.as_deref().unwrap_or(e);
        contactier_runtime::work::record_failure(
            WORKER,
            &d.account_id,
            &d.id,
            i64::from(d.attempts) + 1,
            why,
        );
    }
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
    count_attempt(recipient.as_ref().map_or("unknown", |r| r.kind.as_str()), &outcome);
    let texts = (error.as_deref().unwrap_or(""), cause.as_deref().unwrap_or(""));
    store.record_attempt(d, now, code, texts, outcome).await
}

fn count_attempt(channel: &str, outcome: &Outcome) {
    let result = match outcome {
        Outcome::Delivered => "delivered",
        Outcome::DeadLetter => "dead_letter",
        Outcome::RetryAt(_) => "failed",
    };
    metrics::counter!("contactier_deliveries_total", "channel" => channel.to_owned(), "result" => result)
        .increment(1);
}
