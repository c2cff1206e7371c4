//! The one way HTTP is served (public links, admin socket, admin TCP, metrics): an accept loop
//! that takes a connection slot *before* `accept`, hyper HTTP/1 connections with a bounded head
//! buffer, a time limit on every phase of a connection, and graceful shutdown on the daemon's
//! token. Also the open-files budget the public cap is clamped to.
//!
//! Taking the slot first means connections over the cap wait in the kernel's listen backlog (kernel
//! memory, bounded by the backlog and the socket buffer sizes) rather than in our file table and
//! heap; the file descriptors left over keep the admin socket, the store, the inbound source and
//! the sender working while the public listener is saturated.
//!
//! The time limits, per connection:
//! - a new connection must deliver a complete request head within `header_timeout` of `accept`
//!   (trickling bytes does not extend it);
//! - a kept-alive connection may wait `idle_timeout` for its next request (counted from the last
//!   byte of the previous response written), whose head must then be complete within
//!   `header_timeout` of its first byte;
//! - a request body must arrive in full within `body_timeout` of its head;
//! - a response write that makes no progress for `idle_timeout` fails (a client that never reads);
//! - while a handler runs nothing times out: a 100k-row bulk invite on the admin socket takes a
//!   while, and hyper only reads then to notice a hang-up.
//!
//! Why not hyper's own `header_read_timeout`: hyper 1.x (1.12) starts that timer whenever the
//! connection waits for a head, including right after a response, so it would also close
//! kept-alive connections after `header_timeout` and `idle_timeout` could never be longer; and it
//! covers neither bodies nor writes. So no hyper timer is set (its header timer stays off) and
//! the limits above are enforced here, in one place, by wrapping the stream and the body.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics::{Close, ListenerStats};

/// hyper's `max_buf_size`: the most a request head may take in memory (hyper answers a longer
/// head with a bare 431 itself, no body and none of our headers). hyper's default is ~400 KiB,
/// which let 1,000 unfinished heads cost 120 MiB. 32 KiB leaves room for a request target well
/// over our own limit (`MAX_URI_BYTES`) plus a browser's usual headers, so a too-long link gets
/// our page; only a head over 32 KiB in all gets hyper's 431. Browsers can send longer URLs
/// (Chromium allows 2 MB): no bounded buffer covers every one, and none of ours is near this.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Longer request targets get the generic page with status 414 (see `http`). RFC 9110 §4.1 asks
/// for at least 8000 octets to be supported; our links are under 200.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Descriptors kept back from the public listener for everything else the daemon opens: the sled
/// store's files, the inbound source (maildir files or the IMAP connection), key and template
/// files on reload, logs, the runtime's own (epoll, signals). The sender's SMTP connections
/// (`mail.outbound.concurrency`) and the other listeners' caps are added on top.
pub const RESERVED_FDS: u64 = 64;

/// Caps of the listeners that are not public (part of the reserve).
pub const ADMIN_SOCKET_CONNECTIONS: usize = 32;
pub const ADMIN_TCP_CONNECTIONS: usize = 32;
pub const METRICS_CONNECTIONS: usize = 8;
/// The staff console's listener: a few partner managers at once.
pub const CONSOLE_CONNECTIONS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
}

impl Limits {
    /// One set of limits from `[http]` (`header_timeout`, `idle_timeout`; the body must arrive
    /// within `idle_timeout` too) with the given connection cap.
    pub fn from_config(cfg: &crate::config::Config, max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_timeout: cfg.header_timeout,
            idle_timeout: cfg.idle_timeout,
            body_timeout: cfg.idle_timeout,
        }
    }
}

/// The listen backlog of our TCP listeners (the kernel caps it at `net.core.somaxconn`). Tokio's
/// `TcpListener::bind` asks for 128; connections over the cap wait here, so a deeper queue keeps
/// them in arrival order instead of having the kernel drop SYNs and clients retry with backoff.
pub const TCP_BACKLOG: u32 = 1024;

/// Binds a TCP listener with `TCP_BACKLOG`.
pub fn bind_tcp(addr: std::net::SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(TCP_BACKLOG)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the limit now in force (None when
/// unlimited). Failing to raise it is not an error: the current limit is what we plan with.
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (now.current, now.maximum) {
        if soft < hard {
            match setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(hard),
                    maximum: Some(hard),
                },
            ) {
                Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-files limit"),
                Err(e) => {
                    tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit")
                }
            }
        }
    }
    getrlimit(Resource::Nofile).current
}

/// The public listener's cap: `max_connections`, but never more than the open-files limit
/// leaves after `reserved` descriptors. Err when nothing is left.
pub fn public_cap(
    max_connections: usize,
    nofile: Option<u64>,
    reserved: u64,
) -> Result<usize, String> {
    let Some(nofile) = nofile else {
        return Ok(max_connections);
    };
    let room = nofile.saturating_sub(reserved);
    if room == 0 {
        return Err(format!(
            "the open-files limit {nofile} leaves no descriptor for http connections after \
             reserving {reserved} for the store, mail and admin listeners: raise it \
             (systemd LimitNOFILE=)"
        ));
    }
    Ok(max_connections.min(usize::try_from(room).unwrap_or(usize::MAX)))
}

/// Serves `router` on `listener` until `shutdown`, then closes every connection that has no
/// request in flight, lets the others finish, and returns once all are closed.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: Limits,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
) where
    L: axum::serve::Listener,
    L::Addr: PeerAddr,
{
    stats.set_limit(limits.max_connections);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        // a slot first, so a connection over the cap is not accepted at all
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        // axum's `Listener::accept` retries by itself, pausing after errors such as EMFILE
        let io = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            (io, addr) = listener.accept() => (io, Peer(addr.peer())),
        };
        let (io, peer) = io;
        connections.spawn(connection(
            io,
            peer,
            router.clone(),
            limits,
            stats.clone(),
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// One connection, start to end; the slot is released when it returns.
async fn connection<I>(
    io: I,
    peer: Peer,
    router: Router,
    limits: Limits,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    stats.opened();
    let state = Arc::new(ConnState::new(limits));
    let io = TokioIo::new(TimedIo::new(io, state.clone()));
    let service = RequestService {
        router,
        state: state.clone(),
        peer,
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            // no new request on this connection; one waiting for (or reading) a head is closed now
            state.close_if_idle();
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    let why = state.closed_by().unwrap_or(match &result {
        Ok(()) => Close::Done,
        Err(e) if e.is_parse_too_large() => Close::HeadTooLarge,
        Err(_) => Close::Error,
    });
    if let Err(e) = &result {
        tracing::debug!(error = %e, reason = why.as_str(), "http connection ended");
    }
    stats.closed(why);
}

/// Where a connection is, as far as its deadlines go.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for the first byte of a head: on a new connection (the head must be complete by
    /// `deadline`, accept + header_timeout) or after a response (`deadline` = idle_timeout later).
    Waiting { deadline: Instant, fresh: bool },
    /// Part of a head has arrived; the rest must by `deadline`.
    Head { deadline: Instant },
    /// The router has the request. No read deadline: hyper reads now only to notice a hang-up
    /// (the body has its own deadline).
    Handling,
    /// A limit fired or the daemon is stopping: every further read fails.
    Closed,
}

struct ConnState {
    limits: Limits,
    inner: Mutex<Inner>,
}

struct Inner {
    phase: Phase,
    closed_by: Option<Close>,
    /// The task reading the connection: woken when the phase changes, because hyper may have
    /// polled its read while a handler ran (no deadline) and would not poll again after the
    /// response until the client sends something.
    reader: Option<Waker>,
}

impl Inner {
    fn set(&mut self, phase: Phase) {
        self.phase = phase;
        if let Some(w) = self.reader.take() {
            w.wake();
        }
    }
}

impl ConnState {
    fn new(limits: Limits) -> ConnState {
        ConnState {
            limits,
            inner: Mutex::new(Inner {
                phase: Phase::Waiting {
                    deadline: Instant::now() + limits.header_timeout,
                    fresh: true,
                },
                closed_by: None,
                reader: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bytes_read(&self) {
        let mut g = self.lock();
        if let Phase::Waiting { deadline, fresh } = g.phase {
            g.phase = Phase::Head {
                deadline: if fresh {
                    deadline
                } else {
                    Instant::now() + self.limits.header_timeout
                },
            };
        }
    }

    /// Err(()) once the connection is closed; Ok(None) when a read may wait as long as it likes.
    /// `waker` is woken on the next phase change.
    fn read_deadline(&self, waker: &Waker) -> Result<Option<Instant>, ()> {
        let mut g = self.lock();
        let deadline = match g.phase {
            Phase::Waiting { deadline, .. } | Phase::Head { deadline } => Some(deadline),
            Phase::Handling => None,
            Phase::Closed => return Err(()),
        };
        if !g.reader.as_ref().is_some_and(|w| w.will_wake(waker)) {
            g.reader = Some(waker.clone());
        }
        Ok(deadline)
    }

    /// The read deadline passed: which limit that was.
    fn read_timed_out(&self) -> Close {
        let mut g = self.lock();
        let why = match g.phase {
            Phase::Waiting { fresh: false, .. } => Close::IdleTimeout,
            _ => Close::HeaderTimeout,
        };
        g.set(Phase::Closed);
        *g.closed_by.get_or_insert(why)
    }

    fn fail(&self, why: Close) {
        let mut g = self.lock();
        g.set(Phase::Closed);
        g.closed_by.get_or_insert(why);
    }

    fn request_started(&self) {
        let mut g = self.lock();
        if !matches!(g.phase, Phase::Closed) {
            g.phase = Phase::Handling;
        }
    }

    fn response_done(&self) {
        let mut g = self.lock();
        if matches!(g.phase, Phase::Handling) {
            let deadline = Instant::now() + self.limits.idle_timeout;
            g.set(Phase::Waiting {
                deadline,
                fresh: false,
            });
        }
    }

    /// Bytes went out: a connection between requests is not idle while its last response is
    /// still being written.
    fn wrote(&self) {
        let mut g = self.lock();
        if let Phase::Waiting { fresh: false, .. } = g.phase {
            g.phase = Phase::Waiting {
                deadline: Instant::now() + self.limits.idle_timeout,
                fresh: false,
            };
        }
    }

    fn close_if_idle(&self) {
        let mut g = self.lock();
        if !matches!(g.phase, Phase::Handling) {
            g.set(Phase::Closed);
        }
    }

    fn closed_by(&self) -> Option<Close> {
        self.lock().closed_by
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_string())
}

/// The stream, with the read deadline of the connection's phase and the stalled-write limit.
struct TimedIo<I> {
    io: I,
    state: Arc<ConnState>,
    read_sleep: Pin<Box<Sleep>>,
    write_stalled: Option<Pin<Box<Sleep>>>,
}

impl<I> TimedIo<I> {
    fn new(io: I, state: Arc<ConnState>) -> TimedIo<I> {
        let first = Instant::now() + state.limits.header_timeout;
        TimedIo {
            io,
            state,
            read_sleep: Box::pin(tokio::time::sleep_until(first)),
            write_stalled: None,
        }
    }

    fn wrote(&mut self, r: &io::Result<usize>) {
        self.write_stalled = None;
        if matches!(r, Ok(n) if *n > 0) {
            self.state.wrote();
        }
    }

    /// A write is pending: Err once it has been pending for idle_timeout without progress.
    fn poll_write_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let idle = self.state.limits.idle_timeout;
        let sleep = self
            .write_stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.state.fail(Close::WriteStalled);
            return Poll::Ready(timed_out("the client read nothing of the response"));
        }
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TimedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Ok(deadline) = this.state.read_deadline(cx.waker()) else {
            return Poll::Ready(Err(timed_out("connection closed by a time limit")));
        };
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = deadline else {
                    return Poll::Pending;
                };
                if this.read_sleep.deadline() != deadline {
                    this.read_sleep.as_mut().reset(deadline);
                }
                if this.read_sleep.as_mut().poll(cx).is_ready() {
                    // idle since the last byte written, which is stuck: the client stopped reading
                    if this.write_stalled.is_some() {
                        this.state.fail(Close::WriteStalled);
                    }
                    let why = this.state.read_timed_out();
                    return Poll::Ready(Err(timed_out(why.as_str())));
                }
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TimedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.wrote(&r);
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_write_stall(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.wrote(&r);
                Poll::Ready(r)
            }
            Poll::Pending => this.poll_write_stall(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// hyper's service for one connection: marks the request phase, gives the body its deadline,
/// calls the router, and notices when the response has been handed over.
#[derive(Clone)]
struct RequestService {
    router: Router,
    state: Arc<ConnState>,
    peer: Peer,
}

/// The client a request came from, as a request extension: the IP address on TCP, "local" on
/// the Unix socket. (The console's sign-in throttle counts failures per address.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer(pub String);

/// How a listener's peer address becomes a [`Peer`].
pub trait PeerAddr {
    fn peer(&self) -> String;
}

impl PeerAddr for std::net::SocketAddr {
    fn peer(&self) -> String {
        self.ip().to_string()
    }
}

impl PeerAddr for tokio::net::unix::SocketAddr {
    fn peer(&self) -> String {
        "local".to_string()
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for RequestService {
    type Response = hyper::Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.state.request_started();
        let deadline = Instant::now() + self.state.limits.body_timeout;
        let state = self.state.clone();
        let mut req = req;
        req.extensions_mut().insert(self.peer.clone());
        let req: Request = req.map(|body| {
            Body::new(TimedBody {
                body,
                deadline,
                sleep: None,
                state: state.clone(),
            })
        });
        let router = self.router.clone();
        Box::pin(async move {
            let res: Response = match router.oneshot(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            Ok(res.map(|body| ResponseBody { body, state }))
        })
    }
}

/// The request body, failing once its deadline passes with the body still incomplete.
struct TimedBody {
    body: Incoming,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    state: Arc<ConnState>,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.state.fail(Close::BodyTimeout);
                    return Poll::Ready(Some(Err(timed_out(
                        "the request body did not arrive in time",
                    )
                    .into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The response body; when hyper is done with it (dropped), the connection waits for its next
/// request under `idle_timeout`.
struct ResponseBody {
    body: Body,
    state: Arc<ConnState>,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.state.response_done();
    }
}

#[cfg(test)]
mod tests {
    //! The time limits on an in-memory connection with tokio's paused clock: the times below are
    //! virtual, so the assertions on them are exact and the tests take milliseconds.

    use super::*;
    use axum::routing::{get, post};
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    const LIMITS: Limits = Limits {
        max_connections: 4,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(60),
    };

    fn router() -> Router {
        Router::new()
            .route("/", get(|| async { "hello" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    "finally"
                }),
            )
            .route("/big", get(|| async { "x".repeat(1024 * 1024) }))
            .route("/echo", post(|body: String| async move { body }))
    }

    struct Conn {
        client: DuplexStream,
        stats: Arc<ListenerStats>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn open_with(limits: Limits, pipe: usize) -> Conn {
        let (client, server) = duplex(pipe);
        let stats = Arc::new(ListenerStats::default());
        let shutdown = CancellationToken::new();
        let slots = Arc::new(Semaphore::new(1));
        let slot = slots.try_acquire_owned().unwrap_or_else(|e| panic!("{e}"));
        let task = tokio::spawn(connection(
            server,
            Peer("test".into()),
            router(),
            limits,
            stats.clone(),
            shutdown.clone(),
            slot,
        ));
        Conn {
            client,
            stats,
            shutdown,
            task,
        }
    }

    fn open() -> Conn {
        open_with(LIMITS, 64 * 1024)
    }

    /// Reads until the server closes; returns what it sent.
    async fn read_to_close(c: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads one response that ends with `end`.
    async fn read_response(c: &mut DuplexStream, end: &str) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&out).ends_with(end) {
            let n = c.read(&mut buf).await.unwrap_or(0);
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn closed_as(c: Conn, why: Close) {
        let _ = c.task.await;
        assert_eq!(c.stats.closed_count(why), 1, "closed by {why:?}");
        assert_eq!(c.stats.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_at_the_header_timeout() {
        let mut c = open();
        let t = Instant::now();
        assert_eq!(read_to_close(&mut c.client).await, "");
        assert_eq!(t.elapsed(), LIMITS.header_timeout);
        closed_as(c, Close::HeaderTimeout).await;
    }

    #[tokio::test(start_paused = true)]
    async fn trickling_a_head_does_not_extend_the_header_timeout() {
        let mut c = open();
        let t = Instant::now();
        c.client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut n = 0;
        // a header line every second: the connection ends at 10 s all the same
        while c.client.write_all(b"X-A: b\r\n").await.is_ok() && t.elapsed() < LIMITS.idle_timeout {
            n += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
            if c.task.is_finished() {
                break;
            }
        }
        assert!((9..=11).contains(&n), "{n} lines");
        assert_eq!(read_to_close(&mut c.client).await, "");
        assert!(t.elapsed() <= LIMITS.header_timeout + Duration::from_secs(1));
        closed_as(c, Close::HeaderTimeout).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_alive_connection_waits_idle_timeout_then_header_timeout() {
        let mut c = open();
        for _ in 0..2 {
            c.client
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let r = read_response(&mut c.client, "hello").await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            // idle between requests for longer than header_timeout: still open
            tokio::time::sleep(LIMITS.idle_timeout - Duration::from_secs(1)).await;
        }
        // the next head's first byte starts its own header_timeout
        c.client
            .write_all(b"GET / HT")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let t = Instant::now();
        assert_eq!(read_to_close(&mut c.client).await, "");
        assert_eq!(t.elapsed(), LIMITS.header_timeout);
        closed_as(c, Close::HeaderTimeout).await;

        let mut c = open();
        c.client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        read_response(&mut c.client, "hello").await;
        let t = Instant::now();
        assert_eq!(read_to_close(&mut c.client).await, "");
        assert_eq!(t.elapsed(), LIMITS.idle_timeout);
        closed_as(c, Close::IdleTimeout).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_handler_is_never_cut() {
        let mut c = open();
        c.client
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let r = read_to_close(&mut c.client).await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("finally"),
            "{r}"
        );
        closed_as(c, Close::Done).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_must_arrive_within_the_body_timeout() {
        let mut c = open();
        let t = Instant::now();
        c.client
            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // one more byte every 10 s: never idle long, but never done either
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let _ = c.client.write_all(b"d").await;
        }
        let r = read_to_close(&mut c.client).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        assert_eq!(t.elapsed(), LIMITS.body_timeout);
        closed_as(c, Close::BodyTimeout).await;

        // a body on time is fine
        let mut c = open();
        c.client
            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let r = read_to_close(&mut c.client).await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("hello"), "{r}");
        closed_as(c, Close::Done).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_is_dropped_after_idle_timeout() {
        // a small pipe: the 1 MiB answer cannot be written while the client reads nothing
        let mut c = open_with(LIMITS, 4096);
        c.client
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let t = Instant::now();
        let task = &mut c.task;
        let _ = task.await;
        assert_eq!(t.elapsed(), LIMITS.idle_timeout);
        assert_eq!(c.stats.closed_count(Close::WriteStalled), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_reader_gets_the_whole_answer() {
        let mut c = open_with(LIMITS, 4096);
        c.client
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let t = Instant::now();
        let mut got = 0;
        let mut buf = [0u8; 4096];
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            match c.client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        assert!(got > 1024 * 1024, "{got} bytes");
        assert!(t.elapsed() > 10 * LIMITS.idle_timeout);
        closed_as(c, Close::Done).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_over_the_buffer_gets_hypers_431() {
        let mut c = open();
        let mut head = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        head.resize(MAX_HEAD_BYTES, b'a');
        c.client
            .write_all(&head)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let r = read_to_close(&mut c.client).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");
        closed_as(c, Close::HeadTooLarge).await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_waiting_connections_and_finishes_requests() {
        let mut waiting = open();
        let mut partial = open();
        partial
            .client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut busy = open();
        busy.client
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = Instant::now();
        for c in [&waiting, &partial, &busy] {
            c.shutdown.cancel();
        }
        assert_eq!(read_to_close(&mut waiting.client).await, "");
        assert_eq!(read_to_close(&mut partial.client).await, "");
        assert_eq!(t.elapsed(), Duration::ZERO, "closed at once");
        let r = read_to_close(&mut busy.client).await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("finally"),
            "{r}"
        );
        for c in [waiting, partial, busy] {
            let _ = c.task.await;
            assert_eq!(c.stats.open(), 0);
        }
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_unaccepted() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let stats = Arc::new(ListenerStats::default());
        let shutdown = CancellationToken::new();
        let limits = Limits {
            max_connections: 1,
            ..LIMITS
        };
        let server = tokio::spawn(serve(l, router(), limits, stats.clone(), shutdown.clone()));
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut a = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        a.write_all(get).await.unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 1024];
        let n = a.read(&mut buf).await.unwrap_or(0);
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("hello"));
        // b completes its handshake in the backlog but is not accepted while a holds the slot
        let mut b = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        b.write_all(get).await.unwrap_or_else(|e| panic!("{e}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(stats.accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(stats.open(), 1);
        drop(a);
        let n = b.read(&mut buf).await.unwrap_or(0);
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("hello"));
        assert_eq!(stats.accepted.load(std::sync::atomic::Ordering::Relaxed), 2);
        shutdown.cancel();
        let _ = server.await;
    }

    #[test]
    fn the_public_cap_stays_below_the_open_files_limit() {
        assert_eq!(public_cap(512, None, 100), Ok(512));
        assert_eq!(public_cap(512, Some(1024), 100), Ok(512));
        assert_eq!(public_cap(512, Some(256), 100), Ok(156));
        assert!(public_cap(512, Some(100), 100).is_err());
    }
}
