//! The sender task: drains the outbox through one transport (file or pooled SMTP), marks what
//! was sent, retries transient failures with backoff and jitter, and dead-letters the rest.
//! No email leaves the daemon except from here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lettre::address::Envelope;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::{OAuth2Mechanism, Outbound, SmtpConfig, Tls};
use crate::outbox::{OutboxItem, Sender};

// What a send's outcome means for the item lives in the outbox core (the app decides on it).
pub use crate::outbox::{backoff, SendError};

pub enum Transport {
    File { dir: PathBuf },
    Smtp(Box<SmtpPool>),
}

impl Transport {
    pub fn from_config(
        outbound: &Outbound,
        concurrency: usize,
        max_messages_per_connection: u32,
    ) -> anyhow::Result<Transport> {
        Ok(match outbound {
            Outbound::File { dir } => {
                crate::private::create_dir(dir)
                    .map_err(|e| anyhow::anyhow!("mail.outbound.dir {}: {e}", dir.display()))?;
                Transport::File { dir: dir.clone() }
            }
            Outbound::Smtp(s) => Transport::Smtp(Box::new(
                SmtpPool::new(s, concurrency)?
                    .with_max_messages_per_connection(max_messages_per_connection),
            )),
        })
    }

    /// Sends one message. `mark` fires (or drops) once the caller has made this send's result
    /// durable; an SMTP connection holds back the end of data of its next message until then
    /// (see `run`). The file transport writes each file durably and needs no mark.
    pub async fn send(
        &self,
        envelope: Envelope,
        message_id: &str,
        bytes: Vec<u8>,
        mark: Option<Mark>,
    ) -> Result<(), SendError> {
        match self {
            Transport::File { dir } => {
                let dir = dir.clone();
                let name = message_id
                    .split('@')
                    .next()
                    .unwrap_or(message_id)
                    .to_string();
                tokio::task::spawn_blocking(move || write_eml(&dir, &name, &bytes))
                    .await
                    .map_err(|e| SendError::Transient(format!("file transport task: {e}")))?
            }
            Transport::Smtp(pool) => pool.send_marked(&envelope, &bytes, mark).await,
        }
    }

    /// How many sends the dispatcher keeps in flight for `concurrency`: one per file write; for
    /// SMTP, `PIPELINE_DEPTH` per connection, so a connection has its next message ready when
    /// the current body goes out (the pool still opens at most `concurrency` connections).
    pub fn max_in_flight(&self, concurrency: usize) -> usize {
        match self {
            Transport::File { .. } => concurrency,
            Transport::Smtp(_) => concurrency * PIPELINE_DEPTH,
        }
    }

    /// Where the SMTP pool's results are, for the recorder's gathering; none for files.
    fn gauge(&self) -> Option<&Gauge> {
        match self {
            Transport::File { .. } => None,
            Transport::Smtp(pool) => Some(&pool.gauge),
        }
    }

    /// At shutdown: QUIT on the pooled SMTP connections.
    pub async fn close(&self) {
        if let Transport::Smtp(pool) = self {
            pool.close().await;
        }
    }
}

/// Pooled SMTP connections (our own client, `crate::smtp`): up to `concurrency` connection
/// workers, each a task that owns one connection, kept open and reused. A send goes to the
/// least busy worker (a new one while there are fewer than `concurrency` and all are busy);
/// with PIPELINING a worker writes the next message's MAIL/RCPT/DATA behind the current body,
/// so the dispatcher keeps `PIPELINE_DEPTH` messages in flight per connection (see `run`).
/// A connection that saw an error other than a clean refusal of one message is dropped, never
/// reused. After a transport failure (connect, TLS, greeting, EHLO, AUTH) the pool holds off new
/// connections for a while, so a wrong password or a server that is down is not hammered by
/// every queued message: sends in that window fail at once with the cause, and each message
/// keeps its own backoff.
pub struct SmtpPool {
    server: Arc<crate::smtp::Server>,
    /// `auth = "oauth2"`: each new connection logs in with a token from here.
    oauth: Option<Arc<OAuthLogin>>,
    max_connections: usize,
    workers: std::sync::Mutex<Vec<Worker>>,
    hold_off: Arc<std::sync::Mutex<HoldOff>>,
    tasks: tokio_util::task::TaskTracker,
    /// `max_messages_per_connection`: a connection says QUIT after this many transactions and
    /// the worker opens a new one (providers throttle long-lived sessions).
    max_per_connection: u64,
    gauge: Arc<Gauge>,
}

/// Whether more SMTP results can come before the recorder's next flush (see `record`): a
/// worker in a transaction and not waiting on marks may hand one back any moment; a result a
/// worker handed back may not have reached the recorder yet. When neither is the case, every
/// result that can come before the flush has come, and waiting longer only holds connections.
#[derive(Default)]
pub struct Gauge {
    /// Workers with a job, not waiting on `smtp::Marks`.
    running: Arc<crate::smtp::Running>,
    /// Results handed back with a mark and not yet taken by the recorder.
    transit: std::sync::atomic::AtomicUsize,
}

impl Gauge {
    fn quiet(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.transit.load(SeqCst) == 0 && self.running.is_none()
    }
}

/// Messages in flight per SMTP connection: one on the wire and the next ones rendered and
/// waiting, so the next commands can go out behind the current body. With 2, the next message
/// was ready behind about half the bodies into smtp-sink (rendering is slower than sending);
/// with 4, behind 99% (BENCHMARKS.md).
pub const PIPELINE_DEPTH: usize = 4;

/// How long an idle connection is kept: past this the server may have dropped it (smtp-sink
/// after 100 s, Postfix's smtpd after 300 s), so the worker says QUIT and reconnects when needed.
const MAX_IDLE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct HoldOff {
    until: Option<std::time::Instant>,
    failures: u32,
    cause: String,
}

impl HoldOff {
    /// 1 s after the first transport failure, doubling to 60 s while they go on.
    fn delay(failures: u32) -> Duration {
        Duration::from_secs(
            2u64.saturating_pow(failures.saturating_sub(1).min(6))
                .min(60),
        )
    }
}

/// Fires (or drops) once the result of a send is durable: see [`Transport::send`].
pub type Mark = tokio::sync::oneshot::Receiver<()>;

/// One message for a connection worker, and where its result goes.
struct Job {
    transaction: crate::smtp::Transaction,
    done: tokio::sync::oneshot::Sender<Result<(), SendError>>,
    /// Settles once the result is durable (`smtp::Marks`); none: at once.
    mark: Option<Mark>,
    /// Already moved once to a new connection after the old one broke before its turn.
    moved: bool,
}

impl std::borrow::Borrow<crate::smtp::Transaction> for Job {
    fn borrow(&self) -> &crate::smtp::Transaction {
        &self.transaction
    }
}

struct Worker {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
    /// Jobs handed to this worker and not finished.
    load: Arc<std::sync::atomic::AtomicUsize>,
}

impl SmtpPool {
    pub fn new(s: &SmtpConfig, concurrency: usize) -> anyhow::Result<SmtpPool> {
        use crate::smtp::Security;
        let security = match s.tls {
            Tls::None => Security::None,
            Tls::StartTls => Security::StartTls(crate::tls::tls_config(s.ca_file.as_deref())?),
            Tls::Tls => Security::Tls(crate::tls::tls_config(s.ca_file.as_deref())?),
        };
        let credentials = match (&s.username, &s.password_file) {
            (Some(user), Some(file)) => {
                let password = std::fs::read_to_string(file).map_err(|e| {
                    anyhow::anyhow!("mail.outbound.password_file {}: {e}", file.display())
                })?;
                Some(crate::smtp::Credentials::Password {
                    username: user.clone(),
                    password: password.trim_end_matches(['\r', '\n']).to_string(),
                })
            }
            (Some(_), None) if s.oauth2.is_none() => {
                return Err(anyhow::anyhow!(
                    "mail.outbound.password_file is required with mail.outbound.username"
                ))
            }
            _ => None,
        };
        let oauth = match (&s.oauth2, &s.username) {
            (Some((mechanism, cfg)), Some(username)) => Some(Arc::new(OAuthLogin {
                username: username.clone(),
                mechanism: *mechanism,
                tokens: crate::oauth::TokenSource::new((**cfg).clone())?,
            })),
            (Some(_), None) => {
                return Err(anyhow::anyhow!(
                    "mail.outbound.username is required with auth = \"oauth2\""
                ))
            }
            (None, _) => None,
        };
        Ok(SmtpPool {
            server: Arc::new(crate::smtp::Server {
                host: s.host.clone(),
                port: s.port,
                security,
                hello: hostname_or_default(),
                credentials,
            }),
            oauth,
            max_connections: concurrency.max(1),
            workers: std::sync::Mutex::new(Vec::new()),
            hold_off: Arc::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            max_per_connection: u64::MAX,
            gauge: Arc::default(),
        })
    }

    pub fn with_max_messages_per_connection(mut self, n: u32) -> SmtpPool {
        self.max_per_connection = u64::from(n.max(1));
        self
    }

    /// One message, its result treated as settled at once (tests, the SMTP bench).
    pub async fn send(&self, envelope: &Envelope, bytes: &[u8]) -> Result<(), SendError> {
        self.send_marked(envelope, bytes, None).await
    }

    /// One message; the connection writes the end of data of its next message only once `mark`
    /// has settled (see `run`).
    pub async fn send_marked(
        &self,
        envelope: &Envelope,
        bytes: &[u8],
        mark: Option<Mark>,
    ) -> Result<(), SendError> {
        use std::sync::atomic::Ordering::Relaxed;
        let from = envelope.from().map(|a| a.to_string()).unwrap_or_default();
        let to = envelope.to().iter().map(|a| a.to_string()).collect();
        let (done, result) = tokio::sync::oneshot::channel();
        let job = Job {
            transaction: crate::smtp::Transaction::new(&from, to, bytes),
            done,
            mark,
            moved: false,
        };
        let stopped = || SendError::Transient("the SMTP connection worker stopped".into());
        {
            let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            workers.retain(|w| !w.jobs.is_closed());
            let least_busy = workers.iter().map(|w| w.load.load(Relaxed)).min();
            if least_busy.is_none_or(|l| l > 0) && workers.len() < self.max_connections {
                let (jobs, rx) = tokio::sync::mpsc::unbounded_channel();
                let load = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                self.tasks.spawn(work(
                    self.server.clone(),
                    self.oauth.clone(),
                    self.hold_off.clone(),
                    rx,
                    load.clone(),
                    self.max_per_connection,
                    self.gauge.clone(),
                ));
                workers.push(Worker { jobs, load });
            }
            let w = workers
                .iter()
                .min_by_key(|w| w.load.load(Relaxed))
                .ok_or_else(stopped)?;
            w.load.fetch_add(1, Relaxed);
            if w.jobs.send(job).is_err() {
                w.load.fetch_sub(1, Relaxed);
                return Err(stopped());
            }
        }
        result.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// At shutdown: every worker finishes what it holds, says QUIT and stops; within a second.
    pub async fn close(&self) {
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tasks.wait()).await;
    }
}

/// An SMTP login with OAuth2 bearer tokens (XOAUTH2 or OAUTHBEARER).
struct OAuthLogin {
    username: String,
    mechanism: OAuth2Mechanism,
    tokens: crate::oauth::TokenSource,
}

impl OAuthLogin {
    /// A connection logged in with the cached token; when the server refuses it, once more with
    /// a new token (an expired or revoked one is fetched again; a static file is re-read). The
    /// server's refusal is logged with its own words; the token never is.
    async fn open(
        &self,
        server: &crate::smtp::Server,
    ) -> Result<crate::smtp::Connection, SendError> {
        let token_error =
            |e: crate::oauth::OAuthError| SendError::Transport(format!("OAuth2 token: {e}"));
        let token = self.tokens.token().await.map_err(token_error)?;
        match crate::smtp::Connection::open(&self.server_with(server, &token)).await {
            Ok(c) => return Ok(c),
            Err(e) if e.stage == crate::smtp::Stage::Auth && is_refusal(&e) => {
                tracing::warn!(username = %self.username, mechanism = self.mechanism_name(), server_answer = %e.failure, "SMTP refused the OAuth2 token; fetching a new token and retrying once");
            }
            Err(e) => return Err(classify(&e)),
        }
        let token = self.tokens.refresh().await.map_err(token_error)?;
        crate::smtp::Connection::open(&self.server_with(server, &token))
            .await
            .map_err(|e| {
                if e.stage == crate::smtp::Stage::Auth && is_refusal(&e) {
                    SendError::Transport(format!(
                        "{e} (refused again with a new OAuth2 token for {})",
                        self.username
                    ))
                } else {
                    classify(&e)
                }
            })
    }

    fn mechanism_name(&self) -> &'static str {
        self.smtp_mechanism().name()
    }

    fn smtp_mechanism(&self) -> crate::smtp::Mechanism {
        match self.mechanism {
            OAuth2Mechanism::XOAuth2 => crate::smtp::Mechanism::XOAuth2,
            OAuth2Mechanism::OAuthBearer => crate::smtp::Mechanism::OAuthBearer,
        }
    }

    fn server_with(
        &self,
        server: &crate::smtp::Server,
        token: &crate::oauth::BearerToken,
    ) -> crate::smtp::Server {
        let initial_response = match self.mechanism {
            OAuth2Mechanism::XOAuth2 => crate::oauth::xoauth2(&self.username, token),
            OAuth2Mechanism::OAuthBearer => {
                crate::oauth::oauthbearer(&self.username, &server.host, server.port, token)
            }
        };
        crate::smtp::Server {
            credentials: Some(crate::smtp::Credentials::Bearer {
                mechanism: self.smtp_mechanism(),
                initial_response,
            }),
            ..server.clone()
        }
    }
}

/// The server answered AUTH with a refusal (say `535 5.7.8`), as opposed to a lost connection.
fn is_refusal(e: &crate::smtp::Error) -> bool {
    matches!(&e.failure, crate::smtp::Failure::Reply(r) if r.code >= 500 || r.code == 454)
}

/// A new connection, unless the pool is holding off after a transport failure.
async fn connect(
    server: &crate::smtp::Server,
    oauth: Option<&OAuthLogin>,
    hold_off: &std::sync::Mutex<HoldOff>,
) -> Result<crate::smtp::Connection, SendError> {
    {
        let h = hold_off.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if let Some(until) = h.until.filter(|u| *u > now) {
            return Err(SendError::Transport(format!(
                "not connecting for another {} s after: {}",
                until.saturating_duration_since(now).as_secs() + 1,
                h.cause
            )));
        }
    }
    let opened = match oauth {
        None => crate::smtp::Connection::open(server)
            .await
            .map_err(|e| classify(&e)),
        Some(o) => o.open(server).await,
    };
    match opened {
        Ok(c) => {
            let mut h = hold_off.lock().unwrap_or_else(|p| p.into_inner());
            h.failures = 0;
            h.until = None;
            Ok(c)
        }
        Err(e) => {
            let mut h = hold_off.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            if h.until.is_none_or(|u| u <= now) {
                h.failures += 1;
                h.until = Some(now + HoldOff::delay(h.failures));
            }
            h.cause = e.words().to_string();
            Err(e)
        }
    }
}

/// A connection worker: takes jobs in order, (re)connects when it has none or its connection
/// broke or sat idle too long, and runs the jobs through `Connection::send_all`. Stops when the
/// pool is closed or dropped, after a QUIT.
async fn work(
    server: Arc<crate::smtp::Server>,
    oauth: Option<Arc<OAuthLogin>>,
    hold_off: Arc<std::sync::Mutex<HoldOff>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Job>,
    load: Arc<std::sync::atomic::AtomicUsize>,
    max_per_connection: u64,
    gauge: Arc<Gauge>,
) {
    let mut conn: Option<crate::smtp::Connection> = None;
    let mut queue = std::collections::VecDeque::new();
    // The marks of this worker's messages whose end of data went out, on this connection or the
    // one before: at most one of them is not durable when the next "." is written.
    let mut marks = crate::smtp::Marks::counting(gauge.running.clone());
    // counted in `gauge.running` while it has a job
    let mut running = false;
    loop {
        let job = match queue.pop_front() {
            Some(j) => j,
            None => {
                if std::mem::take(&mut running) {
                    gauge.running.down();
                }
                let got = match conn.as_ref() {
                    Some(c) => {
                        let left = MAX_IDLE.saturating_sub(c.idle_for());
                        match tokio::time::timeout(left, rx.recv()).await {
                            Ok(j) => j,
                            Err(_) => {
                                if let Some(c) = conn.take() {
                                    c.quit().await;
                                }
                                continue;
                            }
                        }
                    }
                    None => rx.recv().await,
                };
                match got {
                    Some(j) => j,
                    None => break,
                }
            }
        };
        if !std::mem::replace(&mut running, true) {
            gauge.running.up();
        }
        let mut feed = WorkerFeed {
            rx: &mut rx,
            queue: &mut queue,
            load: &load,
            left: u64::MAX,
            marks: &mut marks,
            transit: &gauge.transit,
        };
        if job.done.is_closed() {
            // its send was abandoned (a stopping daemon): it stays queued in the store
            feed.finish(job, Ok(()));
            continue;
        }
        if conn.as_ref().is_some_and(|c| {
            !c.is_reusable() || c.idle_for() >= MAX_IDLE || c.transactions() >= max_per_connection
        }) {
            if let Some(c) = conn.take() {
                c.quit().await;
            }
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&server, oauth.as_deref(), &hold_off).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    feed.finish(job, Err(e));
                    continue;
                }
            },
        };
        // this job plus at most `left` more on this connection
        feed.left = max_per_connection.saturating_sub(c.transactions() + 1);
        c.send_all(job, &mut feed).await;
    }
    if running {
        gauge.running.down();
    }
    if let Some(c) = conn {
        c.quit().await;
    }
}

struct WorkerFeed<'a> {
    rx: &'a mut tokio::sync::mpsc::UnboundedReceiver<Job>,
    queue: &'a mut std::collections::VecDeque<Job>,
    load: &'a std::sync::atomic::AtomicUsize,
    /// How many more jobs the current connection may take (`max_messages_per_connection`).
    left: u64,
    marks: &'a mut crate::smtp::Marks,
    transit: &'a std::sync::atomic::AtomicUsize,
}

impl WorkerFeed<'_> {
    fn finish(&mut self, mut job: Job, result: Result<(), SendError>) {
        self.load.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        // a mark not kept is dropped before the result goes: the recorder, which may see the
        // result at once, must find it closed (not counted in `Gauge::transit`)
        drop(job.mark.take());
        let _ = job.done.send(result);
    }
}

impl crate::smtp::Feed<Job> for WorkerFeed<'_> {
    fn next(&mut self) -> Option<Job> {
        loop {
            if self.left == 0 {
                return None;
            }
            let job = self.queue.pop_front().or_else(|| self.rx.try_recv().ok())?;
            if job.done.is_closed() {
                self.finish(job, Ok(()));
                continue;
            }
            self.left -= 1;
            return Some(job);
        }
    }

    fn done(&mut self, mut job: Job, result: Result<(), crate::smtp::Error>) {
        match result {
            // The connection broke before this message's MAIL was answered (a pooled connection
            // the server closed while idle, or the one ahead of it failed): nothing of it was
            // taken, so it goes once more, on a new connection.
            Err(e)
                if !job.moved
                    && e.stage == crate::smtp::Stage::Mail
                    && matches!(e.failure, crate::smtp::Failure::Io(_)) =>
            {
                job.moved = true;
                self.queue.push_back(job);
            }
            other => {
                // its end of data went out (or may have): the server may have taken it, so the
                // next end of data waits until its result is durable
                let sent = match &other {
                    Ok(()) => true,
                    Err(e) => e.stage == crate::smtp::Stage::EndOfData,
                };
                if let Some(m) = job.mark.take().filter(|_| sent) {
                    self.marks.push(m);
                    // the recorder takes it down when it takes the result with its mark still open
                    self.transit
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                self.finish(job, other.map_err(|e| classify(&e)))
            }
        }
    }

    fn marks(&mut self) -> Option<&mut crate::smtp::Marks> {
        Some(self.marks)
    }
}

/// What a failed SMTP step means for the message: the transport's problem (it stays queued and
/// is never made undeliverable), a permanent refusal of it (5xx to its MAIL, RCPT or DATA), or a
/// transient one (4xx, or the connection lost during its transaction).
fn classify(e: &crate::smtp::Error) -> SendError {
    if e.is_throttle() {
        SendError::Throttled(e.to_string())
    } else if e.is_transport() {
        SendError::Transport(e.to_string())
    } else if e.is_permanent() {
        SendError::Permanent(e.to_string())
    } else {
        SendError::Transient(e.to_string())
    }
}

fn hostname_or_default() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "localhost".to_string())
}

/// Writes `<name>.eml` atomically (temp file, fsync, rename): a re-send after a crash overwrites
/// the same file, so the outbox directory never holds a duplicate or a half-written message.
fn write_eml(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), SendError> {
    use std::io::Write;
    let io = |e: std::io::Error| SendError::Transient(format!("writing to {}: {e}", dir.display()));
    let tmp = dir.join(format!(".{name}.tmp"));
    // 0600: the message carries a live link token
    let mut f = crate::private::create_file(&tmp, false).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, dir.join(format!("{name}.eml"))).map_err(io)?;
    Ok(())
}

/// A send's result on its way to the recorder, with the dispatcher's permit it still holds and
/// the mark its connection waits on (fired once the result is durable).
type SendResult = (
    OutboxItem,
    Result<(), SendError>,
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::oneshot::Sender<()>,
);

/// A pipeline, so the SMTP connections stay busy: the dispatcher keeps up to
/// `transport.max_in_flight(concurrency)` sends in flight (`PIPELINE_DEPTH` per SMTP connection,
/// so each connection has its next message ready), and a recorder writes each result as soon as
/// it comes (the server's 250), all that have come in one batch, and makes it durable (group
/// commit: `Store::flush`). A send holds its permit until its result is durable. An item is not
/// fetched again while it is in flight or its result is not yet written.
///
/// What a `kill -9` can make the daemon send again is bounded by the concurrency, not by
/// `max_in_flight`. Proof: (1) the server takes a message only at its end of data (RFC 5321
/// §4.1.1.4; a connection lost before the final "." aborts the transaction), and a message
/// whose mark is durable is never sent again (`outbox_due` reads only queued items). (2) Each
/// SMTP connection worker (`work`, at most `concurrency` of them) passes every message whose
/// end of data it wrote — on any of its connections — to its `smtp::Marks`, and
/// `Connection::send_all` writes the final "." of a message only after every mark in it has
/// settled; the recorder settles a mark only once the result's batch is flushed (or, after a
/// failed write, gives up; the item stays queued). So when a worker writes a ".", every message
/// it ended before is durable; at any instant a worker has at most one message the server may
/// have taken without a durable mark — the last one it ended. (3) Messages behind it in the
/// worker's queue, rendered or with commands written, have no "." on the wire: nothing of them
/// was taken. Hence at a kill at most `concurrency` messages can come twice. The file
/// transport writes each `.eml` durably under its final name before the result: a re-send
/// overwrites the same file.
pub async fn run(app: Arc<App>, transport: Arc<Transport>, shutdown: CancellationToken) {
    run_with_clock(
        app,
        transport,
        shutdown,
        Arc::new(crate::pacing::SystemClock),
    )
    .await
}

/// [`run`] with the clock it reads the time from (the UTC day of `daily_limit`, when an item is
/// due, when a result is recorded): a test runs days in seconds under tokio's paused time.
pub async fn run_with_clock(
    app: Arc<App>,
    transport: Arc<Transport>,
    shutdown: CancellationToken,
    clock: Arc<dyn crate::pacing::Clock>,
) {
    let (concurrency, pace) = {
        let sh = app.shared();
        (sh.cfg.concurrency, sh.cfg.pace())
    };
    // the tighter of rate_per_second and rate_per_minute: one send may start per tick
    let mut pacing = pace.interval_secs().map(|secs| {
        let mut iv = tokio::time::interval(Duration::from_secs_f64(secs));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        iv
    });
    let mut daily = DailyCount::load(&app, clock.now());
    let remote = app.store_is_remote();
    let throttle: Arc<std::sync::Mutex<crate::pacing::Throttle>> = Arc::default();
    let in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
    let recorded = Arc::new(tokio::sync::Notify::new());
    let (tx, rx) = tokio::sync::mpsc::channel::<SendResult>(4096);
    let recorder = tokio::spawn(record(
        app.clone(),
        transport.clone(),
        rx,
        in_flight.clone(),
        recorded.clone(),
        clock.clone(),
    ));
    let sem = Arc::new(tokio::sync::Semaphore::new(
        transport.max_in_flight(concurrency),
    ));
    let mut sends = tokio::task::JoinSet::new();
    while !shutdown.is_cancelled() {
        while sends.try_join_next().is_some() {} // reap finished sends
        let now = clock.now();
        // The read and the filter happen under the in-flight lock. The recorder writes a result
        // before it takes this lock to drop the id, so an item is either still marked in flight
        // here or already recorded in what we read — never neither, which would send it twice.
        // With several daemons on one database an item is claimed with a lease: claim only what
        // can start now (free permits; one at a time when paced), so no claimed item waits here
        // past its lease while another daemon could have sent it.
        let claim = if remote {
            if pacing.is_some() {
                1
            } else {
                sem.available_permits().max(1)
            }
        } else {
            1024
        };
        if remote && pace.per_day > 0 {
            // daily_limit is shared through the database: what every daemon sent today, and
            // what this one has in flight
            daily.roll(now);
            if let Ok(sent) = crate::store::off_runtime(|| app.sent_since(&daily.day)) {
                let busy = in_flight.lock().unwrap_or_else(|p| p.into_inner()).len();
                daily.started = (sent + busy) as u64;
            }
        }
        let due: Vec<OutboxItem> = crate::store::off_runtime(|| {
            let busy = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            match app.outbox_due(&now, claim) {
                Ok(d) => d.into_iter().filter(|i| !busy.contains(&i.id)).collect(),
                Err(e) => {
                    tracing::error!(error = %e, "reading the outbox");
                    Vec::new()
                }
            }
        });
        if due.is_empty() {
            let next_due = crate::store::off_runtime(|| app.outbox_next_due());
            let wait = match next_due {
                Ok(Some(ms)) => {
                    Duration::from_millis((ms - now.timestamp_millis()).clamp(10, 1000) as u64)
                }
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = app.outbox_wake.notified() => {}
                _ = recorded.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let claimed: Vec<String> = due.iter().map(|i| i.id.clone()).collect();
        let mut dispatched = 0;
        for item in due {
            // daily_limit: sends started this UTC day; at the limit, wait for the next day
            if pace.per_day > 0 {
                let now = clock.now();
                daily.roll(now);
                if daily.started >= u64::from(pace.per_day) {
                    let wait = (crate::pacing::next_midnight(now) - now)
                        .to_std()
                        .unwrap_or(Duration::from_secs(1));
                    tracing::info!(
                        daily_limit = pace.per_day,
                        resume_in_secs = wait.as_secs(),
                        "mail.outbound.daily_limit reached: sending resumes at the next UTC day"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    break; // read the queue again on the new day
                }
            }
            let permit = tokio::select! {
                p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.cancelled() => break,
            };
            if let Some(p) = pacing.as_mut() {
                p.tick().await;
            }
            // the server asked us to slow down: a pause, then a longer gap between sends
            let wait = throttle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .wait(tokio::time::Instant::now());
            if !wait.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(item.id.clone());
            daily.started += 1;
            let (app, transport, tx) = (app.clone(), transport.clone(), tx.clone());
            let throttle = throttle.clone();
            sends.spawn(async move {
                let (durable, mark) = tokio::sync::oneshot::channel();
                let res = {
                    let _busy = app.heartbeats.sender.busy();
                    send_one(&app, &transport, &item, mark).await
                };
                {
                    let mut t = throttle.lock().unwrap_or_else(|p| p.into_inner());
                    match &res {
                        Err(SendError::Throttled(words)) => {
                            if let Some((pause, gap)) = t.strike(tokio::time::Instant::now()) {
                                tracing::warn!(
                                    pause_ms = pause.as_millis() as u64,
                                    gap_ms = gap.as_millis() as u64,
                                    server_answer = %words,
                                    "the server asks us to slow down: pausing, then sending more slowly"
                                );
                            }
                        }
                        Ok(()) => t.success(),
                        Err(_) => {}
                    }
                }
                // the permit and the mark go with the result: released once it is durable
                let _ = tx.send((item, res, permit, durable)).await;
            });
            dispatched += 1;
        }
        if dispatched < claimed.len() {
            // claimed but not started (the day's limit, a stop): another daemon may take them
            let left = &claimed[dispatched..];
            if let Err(e) = crate::store::off_runtime(|| app.release_claims(left)) {
                tracing::warn!(error = %e, items = left.len(), "releasing claimed items (they are free again when their leases end)");
            }
        }
    }
    // SIGTERM drain: no new sends. The ones in flight get DRAIN_GRACE to finish and be recorded;
    // any still waiting on a server then are dropped and stay queued (sent again after the
    // restart, with the same Message-ID), so the daemon stops within systemd's timeout.
    let finished = tokio::time::timeout(DRAIN_GRACE, async {
        while sends.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            abandoned = sends.len(),
            "stopping: sends still waiting on the server go back to the queue"
        );
        sends.shutdown().await;
    }
    drop(tx);
    let _ = recorder.await;
    transport.close().await;
}

/// Sends started in the current UTC day, for `daily_limit` (a send counts when it starts: the
/// provider counts what it was offered). Starts from what the store says was sent today.
struct DailyCount {
    day: chrono::DateTime<Utc>,
    started: u64,
}

impl DailyCount {
    fn load(app: &App, now: chrono::DateTime<Utc>) -> DailyCount {
        let day = crate::pacing::start_of_day(now);
        let started = app.sent_since(&day).unwrap_or(0) as u64;
        DailyCount { day, started }
    }

    fn roll(&mut self, now: chrono::DateTime<Utc>) {
        let day = crate::pacing::start_of_day(now);
        if day != self.day {
            self.day = day;
            self.started = 0;
        }
    }
}

/// How long a stopping sender waits for sends in flight (the whole stop must fit in 10 s).
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The longest the recorder holds a first result to gather more into the same flush.
const GATHER_MAX: Duration = Duration::from_millis(1);

/// How long the recorder keeps trying to write a batch of results to an unreachable database
/// before it gives up on them (they are then sent again once their leases end).
const RESULT_RETRY_FOR: Duration = Duration::from_secs(300);

/// Writes a batch of results. With PostgreSQL a failed write is tried again (1 s, 2 s, then every
/// 5 s, for [`RESULT_RETRY_FOR`]): the database may be restarting or failing over, and the
/// messages are already with the server. Meanwhile each connection holds its next "." (its mark
/// is not settled), so no more than the in-flight messages wait unrecorded.
async fn apply_sends(
    app: &App,
    results: Vec<(OutboxItem, Result<(), SendError>)>,
    now: chrono::DateTime<Utc>,
) -> crate::app::Result<()> {
    if !app.store_is_remote() {
        return app.apply_sends(results, now);
    }
    let start = tokio::time::Instant::now();
    let mut wait = Duration::from_secs(1);
    loop {
        match app.apply_sends(results.clone(), now) {
            Err(e) if start.elapsed() < RESULT_RETRY_FOR => {
                tracing::warn!(error = %e, results = results.len(), retry_in_secs = wait.as_secs(), "recording send results failed; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            r => return r,
        }
    }
}

async fn record(
    app: Arc<App>,
    transport: Arc<Transport>,
    mut rx: tokio::sync::mpsc::Receiver<SendResult>,
    in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    recorded: Arc<tokio::sync::Notify>,
    clock: Arc<dyn crate::pacing::Clock>,
) {
    // Durability waits of written groups; while one waits for the disk, the next group is written
    // and joins the same or the next flush.
    let mut durable = tokio::task::JoinSet::new();
    let gauge = transport.gauge();
    let take = |r: SendResult, batch: &mut Vec<SendResult>| {
        // a mark its worker kept (`WorkerFeed::done`) is still open here: counted in transit
        if let Some(g) = gauge.filter(|_| !r.3.is_closed()) {
            use std::sync::atomic::Ordering::SeqCst;
            let _ = g
                .transit
                .fetch_update(SeqCst, SeqCst, |n| Some(n.saturating_sub(1)));
        }
        batch.push(r);
    };
    while let Some(first) = rx.recv().await {
        // Every result that has come by now, and with SMTP those that can still come before
        // this flush (`Gauge`), at most GATHER_MAX after the first: one batch, one flush. Each
        // connection ends its next message only after this flush (`smtp::Marks`), so a flush
        // for each result would cost a flush per message; waiting for all that can come, at
        // most one per connection, shares it.
        let mut batch = Vec::new();
        take(first, &mut batch);
        let deadline = tokio::time::Instant::now() + GATHER_MAX;
        loop {
            while batch.len() < 1024 {
                match rx.try_recv() {
                    Ok(r) => take(r, &mut batch),
                    Err(_) => break,
                }
            }
            if batch.len() >= 1024 || gauge.is_none_or(|g| g.quiet()) {
                break;
            }
            let running = gauge.map(|g| g.running.clone());
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => take(r, &mut batch),
                    None => break,
                },
                // a worker began to wait on its marks or went idle: look again
                _ = async { if let Some(r) = &running { r.fell_to_none().await } } => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let mut ids = Vec::with_capacity(batch.len());
        let mut permits = Vec::with_capacity(batch.len());
        let mut marks = Vec::with_capacity(batch.len());
        let mut results = Vec::with_capacity(batch.len());
        for (item, res, permit, mark) in batch {
            ids.push(item.id.clone());
            permits.push(permit);
            marks.push(mark);
            results.push((item, res));
        }
        let written = apply_sends(&app, results, clock.now()).await;
        let (app, in_flight, recorded) = (app.clone(), in_flight.clone(), recorded.clone());
        durable.spawn(async move {
            let r = match written {
                Ok(()) => app.commit().await,
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                // the items stay queued and are sent again (same Message-ID)
                tracing::error!(error = %e, "recording send results");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let mut busy = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                busy.remove(&id);
            }
            drop(busy);
            drop(permits);
            // the connections may now end their next messages (after a failed write too: the
            // items stay queued, and holding the connections would not make them durable)
            for m in marks {
                let _ = m.send(());
            }
            recorded.notify_one();
        });
        while durable.try_join_next().is_some() {}
    }
    while durable.join_next().await.is_some() {}
}

async fn send_one(
    app: &App,
    transport: &Transport,
    item: &OutboxItem,
    mark: Mark,
) -> Result<(), SendError> {
    let sh = app.shared();
    let sender = Sender {
        from_name: &sh.cfg.from_name,
        from: &sh.cfg.from,
        reply_to: &sh.cfg.reply_to,
        public_url: &sh.cfg.public_url,
        keys: &sh.keys,
        templates: &sh.templates,
        dkim: sh.dkim.as_ref(),
    };
    let bytes = sender.wire_bytes(item, Utc::now()).map_err(|e| {
        SendError::Build(format!(
            "the {} message (locale {}) could not be built: {e}",
            item.kind.as_str(),
            item.locale
        ))
    })?;
    // VERP: the envelope sender is this message's own reply address, so a bounce comes back to
    // the plus address that names it.
    let env = sender
        .reply_address(&item.id)
        .ok()
        .zip(lettre::Address::new(item.to.local(), item.to.domain()).ok())
        .and_then(|(from, to)| Envelope::new(Some(from), vec![to]).ok())
        .ok_or_else(|| SendError::Permanent("cannot build the envelope".into()))?;
    transport
        .send(env, &item.message_id, bytes, Some(mark))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Email, Purpose, RecordId};
    use crate::outbox::{LinkSpec, MailFieldsV1, MailKind};

    /// lettre's formatted message already has CRLF line ends everywhere, even when a field
    /// brings a bare LF; `smtp::proto::data_payload` would repair one anyway.
    #[test]
    fn built_messages_have_crlf_line_ends_only() {
        let templates = crate::templates::Templates::load(None).unwrap_or_else(|e| panic!("{e}"));
        let mut k = std::collections::BTreeMap::new();
        k.insert("k1".to_string(), vec![7u8; 32]);
        let keys = crate::token::Keys::from_bytes("k1", k);
        let email = |s| Email::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let (from, reply_to, to) = (
            email("partners@invited.test"),
            email("replies@invited.test"),
            email("minji.kim@fabrikam.test"),
        );
        let sender = Sender {
            from_name: "Contoso Distribution",
            from: &from,
            reply_to: &reply_to,
            public_url: "https://partners.contoso.test",
            keys: &keys,
            templates: &templates,
            dkim: None,
        };
        for (locale, company) in [
            ("en-US", "Fabrikam\nKorea\r\n.Ltd"),
            ("ko-KR", "패브리캄\n."),
        ] {
            let fields = MailFieldsV1 {
                from_name: "Contoso Distribution".into(),
                recipient_name: "Kim Minji".into(),
                recipient_email: to.to_string(),
                company: company.into(),
                country: "KR".into(),
                provider_name: "Contoso Distribution Korea".into(),
                provider_email: "ops@contoso.test".into(),
                reply_enabled: true,
                needs_enrollment: true,
                state: "invited".into(),
                ..Default::default()
            };
            let item = OutboxItem::queued(
                crate::model::random_ref(),
                "invited.test",
                &to,
                "Kim Minji",
                MailKind::ProviderInvitation,
                locale,
                RecordId::random(),
                fields,
                Some(LinkSpec {
                    purpose: Purpose::AuthorizeProvider,
                    generation: 0,
                    expires_at: 2_000_000_000,
                }),
                Utc::now(),
            );
            let bytes = sender
                .build(&item)
                .unwrap_or_else(|e| panic!("{e}"))
                .formatted();
            for (i, b) in bytes.iter().enumerate() {
                match b {
                    b'\n' => assert!(i > 0 && bytes[i - 1] == b'\r', "{locale}: bare LF at {i}"),
                    b'\r' => assert_eq!(bytes.get(i + 1), Some(&b'\n'), "{locale}: bare CR at {i}"),
                    _ => {}
                }
            }
            // a CRLF message: stuffing only adds dots and the end of data
            let mut stuffed = Vec::new();
            for line in bytes.split_inclusive(|&b| b == b'\n') {
                if line.first() == Some(&b'.') {
                    stuffed.push(b'.');
                }
                stuffed.extend_from_slice(line);
            }
            stuffed.extend_from_slice(b".\r\n");
            assert_eq!(
                crate::smtp::proto::data_payload(&bytes),
                stuffed,
                "{locale}"
            );
        }
    }
}
