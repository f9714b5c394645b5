//! How long and how many connections a client may hold.
//!
//! Anyone who can reach the port may open a connection before any token is
//! read, so the server bounds what a connection costs it:
//!
//! - **headers**: a request's headers must arrive within `header_timeout` of
//!   its first byte, however slowly they trickle;
//! - **bodies**: while the server waits for a request body, the client must
//!   keep up `body_min_rate` bytes a second on average after a grace period,
//!   so a large push over a slow but steady link succeeds and a trickle is
//!   cut; time the server itself spends not reading is not counted;
//! - **idle**: a kept-alive connection with no request is closed after
//!   `idle_timeout`;
//! - **how many**: at most `max_connections` open at once, and at most
//!   `max_per_source` from one address; beyond either the client is answered
//!   `503` with `Retry-After` and the connection is closed.
//!
//! Every accepted socket has `TCP_NODELAY`: a small answer (a git protocol-v2
//! response on a reused connection) goes out at once.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

/// What a connection may cost the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From a request's first byte to the end of its headers.
    pub header_timeout: Duration,
    /// From the end of an answer to the first byte of the next request.
    pub idle_timeout: Duration,
    /// The slowest a request body may arrive, in bytes a second, once
    /// `body_grace` of waiting has passed.
    pub body_min_rate: u64,
    /// How long the server waits for a body before the rate counts.
    pub body_grace: Duration,
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one address. Behind a proxy every
    /// client shares the proxy's address: raise it to `max_connections`.
    pub max_per_source: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            body_min_rate: 1024,
            body_grace: Duration::from_secs(10),
            max_connections: 4096,
            max_per_source: 256,
        }
    }
}

/// How many refused clients are answered at once; past it they are closed
/// without an answer.
const REFUSALS_AT_ONCE: usize = 256;

/// How long a refused client is given to send its request and read the 503.
const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// Seconds a refused client is told to wait.
const RETRY_AFTER_SECONDS: u64 = 5;

/// Serves `router` on `listener` under `limits` until `shutdown` completes,
/// then stops accepting, lets the requests in flight finish and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, router, limits, None, shutdown).await
}

/// [`serve`] over TLS: each connection's handshake must end within the
/// header timeout, and the limits count the bytes under the encryption.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: tokio_rustls::TlsAcceptor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with(listener, router, limits, Some(tls), shutdown).await
}

async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let census = Arc::new(Census::new(limits.max_connections, limits.max_per_source));
    let limits = Arc::new(limits);
    let (closing, closed) = tokio::sync::watch::channel(false);
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS_AT_ONCE));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(error) = socket.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY on a connection");
        }
        match census.admit(peer.ip()) {
            Ok(admission) => {
                let (router, limits, closed, tls) = (router.clone(), limits.clone(), closed.clone(), tls.clone());
                tokio::spawn(connection(socket, peer, admission, router, limits, tls, closed));
            }
            Err(crowded) => {
                tracing::warn!(source = %peer.ip(), %crowded, "refusing a connection");
                if let Ok(turn) = refusals.clone().try_acquire_owned() {
                    tokio::spawn(async move {
                        refuse(socket, crowded).await;
                        drop(turn);
                    });
                }
            }
        }
    }
    drop(listener);
    drop(closed);
    let _ = closing.send(true);
    // Every connection holds a receiver; all dropped means all finished.
    closing.closed().await;
    Ok(())
}

/// Serves one connection until it closes, or until shutdown once its
/// request in flight is answered.
async fn connection(
    socket: TcpStream,
    peer: SocketAddr,
    admission: Admission,
    router: Router,
    limits: Arc<ConnectionLimits>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    closed: tokio::sync::watch::Receiver<bool>,
) {
    let header_timeout = limits.header_timeout;
    let pace = Arc::new(Pace::new(limits));
    let paced = Paced::new(socket, pace.clone());
    match tls {
        None => exchange(paced, peer, router, pace, closed).await,
        Some(tls) => match tokio::time::timeout(header_timeout, tls.accept(paced)).await {
            Ok(Ok(stream)) => exchange(stream, peer, router, pace, closed).await,
            Ok(Err(error)) => tracing::debug!(%error, source = %peer.ip(), "TLS handshake failed"),
            Err(_) => tracing::debug!(source = %peer.ip(), "TLS handshake took too long"),
        },
    }
    drop(admission);
}

/// Serves the requests of one connection until it closes, or until
/// shutdown once its request in flight is answered.
async fn exchange<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    pace: Arc<Pace>,
    mut closed: tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let pace = pace.clone();
        let router = router.clone();
        async move {
            pace.request_began(http_body::Body::is_end_stream(request.body()));
            let (mut parts, body) = request.into_parts();
            parts.extensions.insert(ConnectInfo(peer));
            let request = Request::from_parts(parts, Body::new(Received { inner: body, pace: Some(pace.clone()) }));
            let response = router.oneshot(request).await.unwrap_or_else(|never: Infallible| match never {});
            Ok::<_, Infallible>(response.map(|body| Body::new(Answered { inner: body, pace })))
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    // The header and idle timeouts are kept by `Paced`, which tells them apart.
    http.header_read_timeout(None).keep_alive(true);
    let served = http.serve_connection(io, service);
    let mut served = std::pin::pin!(served);
    let outcome = tokio::select! {
        outcome = served.as_mut() => outcome,
        () = async { let _ = closed.wait_for(|closing| *closing).await; } => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(error) = outcome {
        tracing::debug!(%error, source = %peer.ip(), "connection ended");
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crowded {
    Server,
    Source,
}

impl std::fmt::Display for Crowded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Crowded::Server => "the server holds as many connections as it may",
            Crowded::Source => "this address holds as many connections as one address may",
        })
    }
}

/// Answers a client refused for `crowded` with a 503 once it sent its
/// request head (so the answer is not lost to a reset), within a bounded time.
async fn refuse(mut socket: TcpStream, crowded: Crowded) {
    let body = serde_json::json!({ "error": {
        "code": "unavailable",
        "message": format!("{crowded}; close idle connections and try again in {RETRY_AFTER_SECONDS} s"),
    }})
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {RETRY_AFTER_SECONDS}\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut head = Vec::new();
        let mut chunk = [0u8; 2048];
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = socket.read(&mut chunk).await?;
            if read == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..read]);
        }
        socket.write_all(answer.as_bytes()).await?;
        socket.shutdown().await
    };
    let _ = tokio::time::timeout(REFUSAL_TIME, exchange).await;
}

/// The connections open, in all and by source address.
struct Census {
    max_connections: usize,
    max_per_source: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it frees its place.
struct Admission {
    census: Arc<Census>,
    source: IpAddr,
}

impl Census {
    fn new(max_connections: usize, max_per_source: usize) -> Self {
        Census { max_connections, max_per_source, open: Mutex::new((0, HashMap::new())) }
    }

    fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Admission, Crowded> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, by_source) = &mut *open;
        if *total >= self.max_connections {
            return Err(Crowded::Server);
        }
        let from_source = by_source.entry(source).or_insert(0);
        if *from_source >= self.max_per_source {
            return Err(Crowded::Source);
        }
        *from_source += 1;
        *total += 1;
        Ok(Admission { census: self.clone(), source })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut open = self.census.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, by_source) = &mut *open;
        *total -= 1;
        if let Some(count) = by_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

/// Where a connection is in its exchange, which says how long the server
/// waits for the client's next bytes.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// No request: waiting for the first byte of the next one.
    Idle { since: Instant },
    /// A request's head is arriving (or, on a new connection, the first
    /// request is awaited).
    Head { since: Instant },
    /// A request's body is arriving: `bytes` so far, after `waited` spent
    /// waiting for them.
    Body { bytes: u64, waited: Duration },
    /// The request is read; the answer is being made or sent.
    Busy,
}

/// A connection's phase, shared by its socket and the requests on it.
struct Pace {
    limits: Arc<ConnectionLimits>,
    phase: Mutex<Phase>,
}

impl Pace {
    fn new(limits: Arc<ConnectionLimits>) -> Self {
        // A new connection's first request must be in within the header
        // timeout of connecting: opening connections and sending nothing
        // holds them no longer than trickling headers does.
        Pace { limits, phase: Mutex::new(Phase::Head { since: Instant::now() }) }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn request_began(&self, bodiless: bool) {
        *self.phase() = if bodiless { Phase::Busy } else { Phase::Body { bytes: 0, waited: Duration::ZERO } };
    }

    fn body_ended(&self) {
        let mut phase = self.phase();
        if matches!(*phase, Phase::Body { .. }) {
            *phase = Phase::Busy;
        }
    }

    fn answer_ended(&self) {
        *self.phase() = Phase::Idle { since: Instant::now() };
    }

    /// `read` bytes arrived after waiting since `waiting_since`.
    fn received(&self, read: usize, waiting_since: Option<Instant>) {
        let now = Instant::now();
        let mut phase = self.phase();
        match &mut *phase {
            Phase::Idle { .. } if read > 0 => *phase = Phase::Head { since: now },
            Phase::Body { bytes, waited } => {
                *bytes += read as u64;
                if let Some(since) = waiting_since {
                    *waited += now.saturating_duration_since(since);
                }
            }
            _ => {}
        }
    }

    /// When waiting for bytes that the server began waiting for at
    /// `waiting_since` must end, and what it waits for; none while busy.
    fn deadline(&self, waiting_since: Instant) -> Option<(Instant, &'static str)> {
        let limits = &self.limits;
        match *self.phase() {
            Phase::Idle { since } => Some((since + limits.idle_timeout, "an idle connection reached its timeout")),
            Phase::Head { since } => Some((since + limits.header_timeout, "request headers took too long")),
            Phase::Body { bytes, waited } => {
                let earned = Duration::from_secs_f64(bytes as f64 / limits.body_min_rate.max(1) as f64);
                let allowed = (limits.body_grace + earned).saturating_sub(waited);
                Some((waiting_since + allowed, "the request body arrived slower than the minimum rate"))
            }
            Phase::Busy => None,
        }
    }
}

/// A socket that fails a read the client is too slow to satisfy.
struct Paced<T> {
    inner: T,
    pace: Arc<Pace>,
    timer: Pin<Box<Sleep>>,
    /// When the read now pending began to wait.
    waiting_since: Option<Instant>,
}

impl<T> Paced<T> {
    fn new(inner: T, pace: Arc<Pace>) -> Self {
        Paced { inner, pace, timer: Box::pin(tokio::time::sleep(Duration::ZERO)), waiting_since: None }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Paced<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let waited = this.waiting_since.take();
                this.pace.received(buf.filled().len() - before, waited);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let Some((deadline, why)) = this.pace.deadline(since) else {
                    return Poll::Pending;
                };
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Paced<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A request body that tells its connection when it has all arrived (or
/// is no longer wanted).
struct Received {
    inner: hyper::body::Incoming,
    pace: Option<Arc<Pace>>,
}

impl Received {
    fn ended(&mut self) {
        if let Some(pace) = self.pace.take() {
            pace.body_ended();
        }
    }
}

impl http_body::Body for Received {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) || this.inner.is_end_stream() {
            this.ended();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        self.ended();
    }
}

/// An answer's body that tells its connection when it has been sent.
struct Answered {
    inner: Body,
    pace: Arc<Pace>,
}

impl http_body::Body for Answered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Answered {
    fn drop(&mut self) {
        self.pace.answer_ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            body_min_rate: 1000,
            body_grace: Duration::from_secs(2),
            ..ConnectionLimits::default()
        })
    }

    #[test]
    fn the_census_counts_each_source_and_the_whole() {
        let census = Arc::new(Census::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = census.admit(a).unwrap();
        let _second = census.admit(a).unwrap();
        assert_eq!(census.admit(a).err(), Some(Crowded::Source));
        let _third = census.admit(b).unwrap();
        assert_eq!(census.admit(b).err(), Some(Crowded::Server));
        drop(first);
        assert!(census.admit(a).is_ok(), "a closed connection frees its place");
    }

    #[test]
    fn a_body_earns_waiting_time_by_the_bytes_it_brings() {
        let pace = Pace::new(limits());
        let (deadline, why) = pace.deadline(Instant::now()).unwrap();
        assert!(why.contains("headers") && deadline <= Instant::now() + Duration::from_secs(15));
        pace.request_began(false);
        let start = Instant::now();
        let (deadline, _) = pace.deadline(start).unwrap();
        assert_eq!(deadline - start, Duration::from_secs(2), "the grace alone, before any byte");
        pace.received(3000, None);
        let (deadline, _) = pace.deadline(start).unwrap();
        assert_eq!(deadline - start, Duration::from_secs(5), "3,000 bytes at 1,000 a second earn 3 s more");
        pace.body_ended();
        assert!(pace.deadline(start).is_none(), "no deadline while the server answers");
        pace.answer_ended();
        let (deadline, why) = pace.deadline(start).unwrap();
        assert!(why.contains("idle") && deadline - start >= Duration::from_secs(60));
    }
}
