//! Calls to another service spread over every replica its name resolves to.
//!
//! A ClusterIP name is one address, so one HTTP/2 connection carries every call to one pod.
//! Here the peer's host is resolved (a headless Service answers one address per ready pod),
//! each address gets its own connection, and calls go round robin over the replicas that are
//! not marked down. The name is resolved again periodically and at once after a connection
//! fails, so replicas that come are used and replicas that go are dropped. A call that could
//! not reach a replica is tried on the next one; a call that reached one and failed in
//! transport, or was answered UNAVAILABLE before any reply, is tried again only when it is
//! safe to repeat (see [`is_idempotent`]).

use futures::future::BoxFuture;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a peer's host becomes addresses: DNS in production, a fixed list in tests.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>;
}

/// The system resolver.
pub struct Dns;

impl Resolve for Dns {
    fn resolve(&self, host: &str, port: u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) })
    }
}

/// How often a peer's name is resolved again when nothing failed.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(10);
/// How long a replica that could not be reached is passed over (unless no other is left).
const DOWN_FOR: Duration = Duration::from_secs(5);
/// The longest a call to a peer may take when its caller set no shorter deadline: a replica
/// that stopped answering must not hold a relay forever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 pings find a replica that froze with its connections open.
const KEEPALIVE: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The least time between two resolutions caused by failures.
const RESOLVE_AT_MOST_EVERY: Duration = Duration::from_millis(500);

/// Whether a call may be sent again after it may have reached a replica: internal RPCs
/// (deduplicated by event id or otherwise repeatable by design) and reads.
pub fn is_idempotent(path: &str) -> bool {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("", ""));
    service.ends_with("InternalService")
        || ["Get", "List", "Search", "Count", "Export", "Preview", "Watch"]
            .iter()
            .any(|p| method.starts_with(p))
}

struct Replica {
    addr: SocketAddr,
    channel: Channel,
    down_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn is_down(&self) -> bool {
        self.down_until.lock().expect("down").is_some_and(|t| Instant::now() < t)
    }

    fn mark_down(&self) {
        *self.down_until.lock().expect("down") = Some(Instant::now() + DOWN_FOR);
    }
}

struct Shared {
    name: String,
    host: String,
    port: u16,
    resolver: Arc<dyn Resolve>,
    replicas: RwLock<Arc<Vec<Arc<Replica>>>>,
    next: AtomicUsize,
    resolve_now: tokio::sync::Notify,
    resolved: tokio::sync::Mutex<Option<Instant>>,
    call_timeout: Duration,
}

/// A channel to every replica of one peer; give it to a generated client like a [`Channel`].
#[derive(Clone)]
pub struct Balanced {
    shared: Arc<Shared>,
}

impl Balanced {
    /// Resolves `url`'s host with `resolver` now and every `every` (and after failures).
    pub fn new(url: &str, resolver: Arc<dyn Resolve>, every: Duration) -> anyhow::Result<Self> {
        Self::with_call_timeout(url, resolver, every, CALL_TIMEOUT)
    }

    /// As [`Balanced::new`], each call given at most `call_timeout`.
    pub fn with_call_timeout(
        url: &str,
        resolver: Arc<dyn Resolve>,
        every: Duration,
        call_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let uri: http::Uri = url.parse().map_err(|e| anyhow::anyhow!("invalid peer URL {url}: {e}"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "peer URL {url}: only http:// is spread over replicas"
        );
        let host = uri.host().ok_or_else(|| anyhow::anyhow!("peer URL {url} has no host"))?;
        let shared = Arc::new(Shared {
            name: url.to_owned(),
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port: uri.port_u16().unwrap_or(80),
            resolver,
            replicas: RwLock::default(),
            next: AtomicUsize::new(0),
            resolve_now: tokio::sync::Notify::new(),
            resolved: tokio::sync::Mutex::default(),
            call_timeout,
        });
        tokio::spawn(keep_resolving(Arc::downgrade(&shared), every));
        Ok(Self { shared })
    }

    /// The addresses calls go to now.
    pub fn replicas(&self) -> Vec<SocketAddr> {
        self.shared.replicas.read().expect("replicas").iter().map(|r| r.addr).collect()
    }
}

impl Shared {
    /// Resolves the name and updates the replicas: new addresses connect, gone ones are
    /// dropped, kept ones keep their connection. A failed or empty answer keeps the last list.
    async fn resolve(&self) {
        let mut last = self.resolved.lock().await;
        if last.is_some_and(|t| t.elapsed() < RESOLVE_AT_MOST_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let mut addrs = match self.resolver.resolve(&self.host, self.port).await {
            Ok(a) if !a.is_empty() => a,
            Ok(_) => return tracing::warn!(peer = %self.name, "the peer's name resolved to no address"),
            Err(e) => {
                return tracing::warn!(peer = %self.name, error = %e, "the peer's name cannot be resolved");
            }
        };
        addrs.sort();
        addrs.dedup();
        let current = self.replicas.read().expect("replicas").clone();
        if current.iter().map(|r| r.addr).eq(addrs.iter().copied()) {
            return;
        }
        let next: Vec<Arc<Replica>> = addrs
            .iter()
            .map(|addr| match current.iter().find(|r| r.addr == *addr) {
                Some(r) => r.clone(),
                None => Arc::new(Replica {
                    addr: *addr,
                    channel: Endpoint::from_shared(format!("http://{addr}"))
                        .expect("an address is a URI")
                        .connect_timeout(Duration::from_secs(2))
                        .timeout(self.call_timeout)
                        .http2_keep_alive_interval(KEEPALIVE)
                        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                        .keep_alive_while_idle(true)
                        .connect_lazy(),
                    down_until: Mutex::default(),
                }),
            })
            .collect();
        tracing::info!(peer = %self.name, replicas = next.len(), "peer replicas changed");
        *self.replicas.write().expect("replicas") = Arc::new(next);
    }

    /// The next replica round robin, passing over those tried and, while others are left,
    /// those marked down.
    fn pick(&self, tried: &[SocketAddr]) -> Option<Arc<Replica>> {
        let replicas = self.replicas.read().expect("replicas").clone();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order = (0..replicas.len())
            .map(|i| &replicas[(start + i) % replicas.len()])
            .filter(|r| !tried.contains(&r.addr));
        order.clone().find(|r| !r.is_down()).or_else(|| order.next()).cloned()
    }
}

async fn keep_resolving(shared: Weak<Shared>, every: Duration) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        s.resolve().await;
        let wake = async {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = s.resolve_now.notified() => {}
            }
        };
        wake.await;
    }
}

/// Whether `e` or any error it came from answers `test`.
fn in_chain(
    e: &(dyn std::error::Error + 'static),
    test: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut source = Some(e);
    while let Some(e) = source {
        if test(e) {
            return true;
        }
        source = e.source();
    }
    false
}

/// The kind of an I/O error, when `e` is one.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    e.downcast_ref::<std::io::Error>().map(std::io::Error::kind)
}

/// Whether a transport error happened before the request could reach the replica.
fn unsent(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind as K;
    in_chain(e, |e| {
        matches!(
            io_kind(e),
            Some(K::ConnectionRefused | K::AddrNotAvailable | K::HostUnreachable | K::NetworkUnreachable)
        ) || e.to_string().contains("connect error")
    })
}

/// Whether a call failed because its connection closed under it (reset, broken, ended), as
/// opposed to a replica that could not be reached or did not answer in time.
fn connection_lost(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind as K;
    in_chain(e, |e| {
        let text = e.to_string().to_ascii_lowercase();
        matches!(
            io_kind(e),
            Some(K::BrokenPipe | K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof)
        ) || ["connection closed", "broken pipe", "connection reset", "go away", "goaway"]
            .iter()
            .any(|t| text.contains(t))
    })
}

/// Whether a call failed because its time ran out.
fn deadline_passed(e: &(dyn std::error::Error + 'static)) -> bool {
    in_chain(e, <dyn std::error::Error>::is::<tonic::TimeoutExpired>)
}

/// The gRPC code of a response that carries no message (trailers only), if any.
fn early_status(response: &http::Response<Body>) -> Option<tonic::Code> {
    crate::wire::early_status(response).map(|s| s.code())
}

/// A request made again from its parts and its buffered body, to be sent again.
pub(crate) fn copy(parts: &http::request::Parts, body: bytes::Bytes) -> http::Request<Body> {
    let mut r = http::Request::new(Body::new(http_body_util::Full::new(body)));
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    *r.extensions_mut() = parts.extensions.clone();
    r
}

impl tower_service::Service<http::Request<Body>> for Balanced {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        // Each call picks a replica and waits for it there.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            if shared.replicas.read().expect("replicas").is_empty() {
                shared.resolve().await;
            }
            let path = request.uri().path().to_owned();
            let idempotent = is_idempotent(&path);
            let (mut parts, body) = request.into_parts();
            let (service, method) = crate::wire::split_path(&path);
            let span = tracing::info_span!(
                "peer call",
                otel.name = %path.trim_start_matches('/'),
                otel.kind = "client",
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %method,
                rpc.grpc.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                server.address = %shared.host,
            );
            // The callee continues this span, not its parent.
            crate::wire::inject_into_headers(&span, &mut parts.headers);
            let started = std::time::Instant::now();
            let result =
                tracing::Instrument::instrument(shared.send(parts, body, idempotent), span.clone()).await;
            let code = match &result {
                Ok(r) => early_status(r).unwrap_or(tonic::Code::Ok),
                Err(e) => {
                    e.downcast_ref::<tonic::Status>().map_or(tonic::Code::Unavailable, tonic::Status::code)
                }
            };
            span.record("rpc.grpc.status_code", code as i32);
            if !matches!(code, tonic::Code::Ok) {
                span.record("otel.status_code", "ERROR");
            }
            metrics::counter!("grpc_client_handled_total", "grpc_service" => service.clone(), "grpc_method" => method.clone(), "grpc_code" => crate::wire::code_name(code)).increment(1);
            metrics::histogram!("grpc_client_handling_seconds", "grpc_service" => service, "grpc_method" => method).record(started.elapsed().as_secs_f64());
            result
        })
    }
}

impl Shared {
    /// Sends one call, on another replica when that is safe and the first could not take it.
    async fn send(
        self: Arc<Self>,
        parts: http::request::Parts,
        body: Body,
        idempotent: bool,
    ) -> Result<http::Response<Body>, BoxError> {
        use tower::ServiceExt;
        let shared = self;
        if contactier_proto::method(parts.uri.path()).is_some_and(|m| m.client_streaming) {
            // A stream of requests goes out as it is produced, to one replica, and is not repeated.
            let Some(replica) = shared.pick(&[]) else {
                return Err(Box::new(tonic::Status::unavailable(format!(
                    "no replica of {} is known",
                    shared.name
                ))));
            };
            let request = http::Request::from_parts(parts, body);
            return replica.channel.clone().oneshot(request).await.map_err(|e| {
                if unsent(&e) {
                    replica.mark_down();
                    shared.resolve_now.notify_one();
                }
                e.into()
            });
        }
        // Kept so the call can be sent again; other calls are single messages.
        let body = body.collect().await?.to_bytes();
        let mut tried = Vec::new();
        let mut last: Option<Result<http::Response<Body>, BoxError>> = None;
        // A connection closed under a call (a replica ending a connection at its age, or
        // going away) says nothing of the replica: a call safe to repeat gets one more try,
        // on another replica or on a new connection to the same one.
        let mut lost_once = false;
        while let Some(replica) = shared.pick(&tried) {
            tried.push(replica.addr);
            match replica.channel.clone().oneshot(copy(&parts, body.clone())).await {
                Ok(response) if idempotent && early_status(&response) == Some(tonic::Code::Unavailable) => {
                    last = Some(Ok(response));
                }
                Ok(response) => return Ok(response),
                Err(e) if idempotent && !lost_once && connection_lost(&e) => {
                    lost_once = true;
                    tracing::info!(peer = %shared.name, replica = %replica.addr, error = %e, "a connection to a peer replica closed under a call; sending it again");
                    tried.pop();
                    last = Some(Err(e.into()));
                }
                Err(e) => {
                    replica.mark_down();
                    shared.resolve_now.notify_one();
                    if deadline_passed(&e) && crate::deadline::remaining().is_some_and(|d| d.is_zero()) {
                        // The caller's own deadline: no replica can still answer in time.
                        return Err(Box::new(tonic::Status::deadline_exceeded(format!(
                            "the caller's deadline passed waiting for {}",
                            shared.name
                        ))));
                    }
                    let again = idempotent || unsent(&e);
                    tracing::warn!(peer = %shared.name, replica = %replica.addr, error = %e, again, "a call to a peer replica failed");
                    if !again {
                        return Err(e.into());
                    }
                    last = Some(Err(e.into()));
                }
            }
        }
        match last {
            Some(Err(e)) if deadline_passed(e.as_ref()) => Err(Box::new(tonic::Status::deadline_exceeded(
                format!("no replica of {} answered in time", shared.name),
            ))),
            Some(last) => last,
            None => {
                Err(Box::new(tonic::Status::unavailable(format!("no replica of {} is known", shared.name))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_rpcs_and_reads_may_be_repeated_writes_may_not() {
        assert!(is_idempotent("/contactier.billing.v1.BillingInternalService/ApplyCountEvents"));
        assert!(is_idempotent("/contactier.contacts.v1.ContactsService/SearchContacts"));
        assert!(is_idempotent("/contactier.ops.v1.ClockService/GetTime"));
        assert!(!is_idempotent("/contactier.marketing_status.v1.MarketingStatusService/SetMarketingStatus"));
        assert!(!is_idempotent("/contactier.ops.v1.ClockService/AdvanceTime"));
    }
}
