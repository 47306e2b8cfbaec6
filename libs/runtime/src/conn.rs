//! Connections a listener keeps. A listener holds at most a configured number at once (one past
//! it is closed as it is accepted); a connection must start a request within a deadline of being
//! accepted and is closed once it has carried none for the idle timeout. A client that opens
//! connections and sends nothing, or leaves them idle, cannot use up the process's file
//! descriptors. Requests in flight (an open WatchAlerts stream among them) keep their
//! connection open.

use pin_project_lite::pin_project;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;

/// How a listener treats its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections held at once.
    pub max_connections: usize,
    /// Streams (calls) one connection may carry at once.
    pub max_streams: u32,
    /// Time a new connection has to start its first request.
    pub first_request: Duration,
    /// Time a connection may carry no request before it is closed.
    pub idle: Duration,
    /// HTTP/2 pings to find peers that are gone: every `keepalive`, answered within 20 s.
    pub keepalive: Duration,
    /// Connections one remote address may hold at once.
    pub per_address: usize,
    /// Age after which a connection is asked to go (its calls may finish), so clients spread
    /// again over replicas added since.
    pub max_age: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 2_048,
            max_streams: 100,
            first_request: Duration::from_secs(10),
            idle: Duration::from_secs(300),
            keepalive: Duration::from_secs(30),
            per_address: 256,
            max_age: Duration::from_secs(300),
        }
    }
}

/// What requests on one connection tell its reader: how many are open, when the last ended.
#[derive(Debug)]
pub struct ConnState {
    accepted: Instant,
    active: AtomicUsize,
    started: AtomicBool,
    /// Milliseconds after `accepted` when the connection last carried a request.
    last_active_ms: AtomicU64,
    /// The connection's reader, woken when its last request ends so it re-arms its deadline.
    reader: futures::task::AtomicWaker,
    /// Calls without a token (health checks, reflection) open now: they never keep a connection.
    exempt: AtomicUsize,
}

impl ConnState {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            active: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            last_active_ms: AtomicU64::new(0),
            reader: futures::task::AtomicWaker::new(),
            exempt: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.accepted.elapsed().as_millis() as u64;
        self.last_active_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// A request began on the connection; the guard ends it when dropped.
    pub fn begin(self: &Arc<Self>) -> RequestGuard {
        self.started.store(true, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        self.touch();
        RequestGuard(self.clone())
    }

    /// When the connection is to be closed unless a request is open then.
    fn deadline(&self, limits: &ConnLimits) -> Instant {
        if self.started.load(Ordering::Relaxed) {
            let last = Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed));
            self.accepted + last + limits.idle
        } else {
            self.accepted + limits.first_request
        }
    }
}

/// Calls without a token one connection may have open at once.
const EXEMPT_PER_CONNECTION: usize = 4;

/// Counts a call without a token while it is open.
#[derive(Debug)]
pub struct ExemptGuard(Arc<ConnState>);

impl Drop for ExemptGuard {
    fn drop(&mut self) {
        self.0.exempt.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a request holds of its connection until its answer ends.
#[derive(Debug)]
pub enum Hold {
    /// A call with a token keeps the connection open.
    Request(RequestGuard),
    /// A call without one does not, and only a few may be open at once.
    Exempt(ExemptGuard),
}

/// Keeps a connection busy while a request (and its answer's body) is open.
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.touch();
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.reader.wake();
        }
    }
}

/// The request extension that names a request's connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub state: Arc<ConnState>,
}

impl ConnInfo {
    /// The connection of a request, over plain TCP or TLS.
    pub fn of<B>(req: &http::Request<B>) -> Option<&ConnInfo> {
        req.extensions().get::<ConnInfo>().or_else(|| {
            req.extensions()
                .get::<tonic::transport::server::TlsConnectInfo<ConnInfo>>()
                .map(tonic::transport::server::TlsConnectInfo::get_ref)
        })
    }
}

/// An accepted connection that holds its place under the listener's cap and is closed when it
/// misses its deadline.
pub struct Conn {
    io: TcpStream,
    timer: Pin<Box<tokio::time::Sleep>>,
    state: Arc<ConnState>,
    limits: ConnLimits,
    remote: Option<SocketAddr>,
    _permit: OwnedSemaphorePermit,
    _address: AddressSlot,
}

impl Conn {
    /// Whether the connection has outlived its deadline; arms the timer for it when it has
    /// not. While a request is open there is none: the end of the last one wakes the reader.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.state.reader.register(cx.waker());
        loop {
            if self.state.active.load(Ordering::Relaxed) > 0 {
                return false;
            }
            let deadline = self.state.deadline(&self.limits);
            if deadline <= Instant::now() {
                return true;
            }
            if self.timer.deadline() != deadline.into() {
                self.timer.as_mut().reset(deadline.into());
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
    }
}

fn timed_out(state: &ConnState) -> io::Error {
    let what = if state.started.load(Ordering::Relaxed) { "idle" } else { "no request" };
    metrics::counter!("contactier_connections_closed_total", "reason" => what).increment(1);
    io::Error::new(io::ErrorKind::TimedOut, format!("connection closed: {what} within its deadline"))
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            return Poll::Ready(Err(timed_out(&self.state)));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo { remote: self.remote, state: self.state.clone() }
    }
}

/// The connections `listener` accepts, under `limits`, with TCP_NODELAY set (without it a
/// small answer can wait for the peer's delayed ACK, about 40 ms).
pub fn incoming(listener: TcpListener, limits: ConnLimits) -> impl Stream<Item = io::Result<Conn>> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let start = (listener, slots, Addresses::default(), None::<Instant>);
    futures::stream::unfold(start, move |(listener, slots, addresses, mut warned)| async move {
        loop {
            let (io, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of file descriptors or the like: wait a moment rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // One address past its share, or the listener full: closed at once; the log says
            // so at most once a minute.
            let address = addresses.take(remote.ip(), limits.per_address);
            let permit = slots.clone().try_acquire_owned().ok();
            let (Some(address), Some(permit)) = (address, permit) else {
                let reason = if permit_free(&slots) { "per_address" } else { "full" };
                metrics::counter!("contactier_connections_closed_total", "reason" => reason).increment(1);
                if warned.is_none_or(|w| w.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        max = limits.max_connections,
                        per_address = limits.per_address,
                        reason,
                        "connection limit reached; closing new connections"
                    );
                    warned = Some(Instant::now());
                }
                drop(io);
                continue;
            };
            let _ = io.set_nodelay(true);
            let conn = Conn {
                io,
                timer: Box::pin(tokio::time::sleep(limits.first_request)),
                state: Arc::new(ConnState::new()),
                limits,
                remote: Some(remote),
                _permit: permit,
                _address: address,
            };
            return Some((Ok(conn), (listener, slots, addresses, warned)));
        }
    })
}

fn permit_free(slots: &Semaphore) -> bool {
    slots.available_permits() > 0
}

/// Connections open per remote address.
#[derive(Clone, Default)]
struct Addresses(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One connection's place under its address's cap.
pub struct AddressSlot {
    addresses: Addresses,
    ip: std::net::IpAddr,
}

impl Addresses {
    fn take(&self, ip: std::net::IpAddr, max: usize) -> Option<AddressSlot> {
        let mut open = self.0.lock().expect("addresses");
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot { addresses: self.clone(), ip })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.addresses.0.lock().expect("addresses");
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

pin_project! {
    /// An answer's body that keeps its request counted on the connection until it ends.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        _guard: Option<Hold>,
    }
}

impl<B: http_body::Body> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Counts each request on its connection from its start to the end of its answer.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackLayer;

impl<S> tower_layer::Layer<S> for TrackLayer {
    type Service = Track<S>;
    fn layer(&self, inner: S) -> Track<S> {
        Track { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Track<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for Track<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = match ConnInfo::of(&req) {
            Some(c) if crate::auth::is_exempt(req.uri().path()) => {
                if c.state.exempt.fetch_add(1, Ordering::Relaxed) >= EXEMPT_PER_CONNECTION {
                    c.state.exempt.fetch_sub(1, Ordering::Relaxed);
                    let busy = tonic::Status::resource_exhausted(format!(
                        "at most {EXEMPT_PER_CONNECTION} calls without a token at once on a connection"
                    ));
                    return Box::pin(async move { Ok(busy.into_http()) });
                }
                Some(Hold::Exempt(ExemptGuard(c.state.clone())))
            }
            Some(c) => Some(Hold::Request(c.state.begin())),
            None => None,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|inner| tonic::body::Body::new(Tracked { inner, _guard: guard })))
        })
    }
}
