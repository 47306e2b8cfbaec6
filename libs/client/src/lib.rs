//! Rust clients of the Contactier services.
//!
//! ```no_run
//! # async fn demo() -> Result<(), contactier_client::Error> {
//! use contactier_client::{Client, Endpoints, TokenFile};
//! use contactier_client::pb::billing::v1::GetUsageRequest;
//!
//! let client = Client::builder(Endpoints::local("127.0.0.1", 50051))
//!     .token(TokenFile::new("/var/run/secrets/contactier/token"))
//!     .build()?;
//! let usage = client.billing().get_usage(GetUsageRequest {}).await?.into_inner();
//! println!("{} marketing contacts", usage.usage.map_or(0, |u| u.marketing_count));
//! # Ok(()) }
//! ```
//!
//! Every service gets one [`Calls`] channel: connections to every replica its name resolves
//! to, round robin ([`balance`]); a bearer token from a [`TokenSource`] on each call; a
//! deadline on each call that streams no answers; and calls that cannot do their work twice
//! sent again with backoff and jitter ([`retry`]). A refusal converts into an [`Error`] with
//! the google.rpc details as values.

pub mod balance;
pub mod deadline;
pub mod error;
pub mod retry;
pub mod token;
pub mod wire;

pub use contactier_proto as pb;
pub use error::{Error, FieldViolation};
pub use retry::{Calls, RetryPolicy};
pub use token::{NoToken, StaticToken, TokenFile, TokenSource};

use contactier_proto::billing::v1::billing_service_client::BillingServiceClient;
use contactier_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use contactier_proto::marketing_status::v1::marketing_status_service_client::MarketingStatusServiceClient;
use contactier_proto::notification::v1::notification_service_client::NotificationServiceClient;
use contactier_proto::ops::v1::clock_service_client::ClockServiceClient;
use std::sync::Arc;
use std::time::Duration;

/// Where each service answers (`http://host:port`; a headless Service name reaches every
/// replica).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub contacts: String,
    pub marketing_status: String,
    pub billing: String,
    pub notification: String,
}

impl Endpoints {
    /// The four services on consecutive ports from `base_port`, as `contactier` runs them.
    pub fn local(host: &str, base_port: u16) -> Self {
        let host =
            if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
        let url = |i: u16| format!("http://{host}:{}", base_port.saturating_add(i));
        Self { contacts: url(0), marketing_status: url(1), billing: url(2), notification: url(3) }
    }
}

/// One of the four services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Contacts,
    MarketingStatus,
    Billing,
    Notification,
}

/// Typed clients of the four services over one balanced channel each.
#[derive(Clone)]
pub struct Client {
    contacts: Calls,
    marketing_status: Calls,
    billing: Calls,
    notification: Calls,
}

/// How a [`Client`] is made.
pub struct Builder {
    endpoints: Endpoints,
    tokens: Arc<dyn TokenSource>,
    deadline: Duration,
    policy: RetryPolicy,
    resolver: Arc<dyn balance::Resolve>,
}

impl Builder {
    /// The token of every call (default: none).
    pub fn token(mut self, source: impl TokenSource) -> Self {
        self.tokens = Arc::new(source);
        self
    }

    /// The deadline of each call that streams no answers, retries included, unless the
    /// request sets its own (`Request::set_timeout`). Default 30 s.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub fn retries(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How names become addresses (default: the system resolver, again every 10 s).
    pub fn resolver(mut self, resolver: Arc<dyn balance::Resolve>) -> Self {
        self.resolver = resolver;
        self
    }

    /// The client; must be called inside a Tokio runtime (names are resolved in the background).
    pub fn build(self) -> Result<Client, Error> {
        let calls = |url: &str| -> Result<Calls, Error> {
            // The per-call deadline is the request's grpc-timeout; this only bounds the wait
            // for the answer to begin, which a long import may keep waiting.
            let channel = balance::Balanced::with_call_timeout(
                url,
                self.resolver.clone(),
                balance::RESOLVE_EVERY,
                Duration::from_secs(24 * 3600),
            )
            .map_err(|e| Error::from(tonic::Status::invalid_argument(e.to_string())))?;
            Ok(Calls::new(channel, self.tokens.clone(), self.policy, self.deadline))
        };
        Ok(Client {
            contacts: calls(&self.endpoints.contacts)?,
            marketing_status: calls(&self.endpoints.marketing_status)?,
            billing: calls(&self.endpoints.billing)?,
            notification: calls(&self.endpoints.notification)?,
        })
    }
}

impl Client {
    pub fn builder(endpoints: Endpoints) -> Builder {
        Builder {
            endpoints,
            tokens: Arc::new(NoToken),
            deadline: balance::CALL_TIMEOUT,
            policy: RetryPolicy::default(),
            resolver: Arc::new(balance::Dns),
        }
    }

    pub fn contacts(&self) -> ContactsServiceClient<Calls> {
        ContactsServiceClient::new(self.contacts.clone())
    }

    pub fn marketing_status(&self) -> MarketingStatusServiceClient<Calls> {
        MarketingStatusServiceClient::new(self.marketing_status.clone())
    }

    pub fn billing(&self) -> BillingServiceClient<Calls> {
        BillingServiceClient::new(self.billing.clone())
    }

    pub fn notification(&self) -> NotificationServiceClient<Calls> {
        NotificationServiceClient::new(self.notification.clone())
    }

    /// The clock every service runs on (served by each; asked of billing).
    pub fn clock(&self) -> ClockServiceClient<Calls> {
        ClockServiceClient::new(self.billing.clone())
    }

    /// The channel of one service, for the other generated clients it serves (work, health).
    pub fn channel(&self, service: Service) -> Calls {
        match service {
            Service::Contacts => self.contacts.clone(),
            Service::MarketingStatus => self.marketing_status.clone(),
            Service::Billing => self.billing.clone(),
            Service::Notification => self.notification.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_endpoints_are_consecutive_ports_and_ipv6_hosts_are_bracketed() {
        let e = Endpoints::local("127.0.0.1", 50051);
        assert_eq!(e.contacts, "http://127.0.0.1:50051");
        assert_eq!(e.notification, "http://127.0.0.1:50054");
        assert_eq!(Endpoints::local("::1", 7000).billing, "http://[::1]:7002");
    }
}
