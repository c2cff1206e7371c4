//! One SMTP client connection and the mail transactions on it. Every failure says at which stage
//! it happened and keeps the server's reply, so the caller can tell the transport's problems
//! (connect, TLS, greeting, EHLO, AUTH, 421: the message stays queued) from this message's (a
//! refusal of its MAIL, RCPT or DATA).

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::proto::{self, Capabilities, Credentials, Mechanism, Reply};

/// How long to wait for a TCP connection and TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for any one reply (RFC 5321 §4.5.3.2 suggests 2–10 minutes per stage; the
/// sender's whole send used 120 s before, and a stopping daemon drops sends after 5 s anyway).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for a write to be taken by the socket.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(120);

/// One message to send: its envelope and its DATA payload.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub from: String,
    pub to: Vec<String>,
    /// As `proto::data_payload` makes it: CRLF, dot-stuffed, ending in CRLF.CRLF.
    pub payload: Vec<u8>,
    /// The message's size before stuffing (MAIL's `SIZE=`).
    pub size: usize,
    /// The message has 8-bit bytes (MAIL's `BODY=8BITMIME` when offered).
    pub eight_bit: bool,
}

impl Transaction {
    pub fn new(from: &str, to: Vec<String>, message: &[u8]) -> Transaction {
        Transaction {
            from: from.to_string(),
            to,
            payload: proto::data_payload(message),
            size: message.len(),
            eight_bit: !message.is_ascii(),
        }
    }
}

/// Where `Connection::send_all` takes transactions from and hands their results to.
pub trait Feed<T> {
    /// The next transaction if one is ready now; never waits.
    fn next(&mut self) -> Option<T>;
    /// The result of `item`, as soon as it is known.
    fn done(&mut self, item: T, result: Result<(), Error>);
    /// What the end of data of the next transaction waits for (see [`Marks`]); `None`: nothing.
    fn marks(&mut self) -> Option<&mut Marks> {
        None
    }
}

/// Results the caller has not made safe yet ("settled": for the sender, durable in the store),
/// one receiver each, fired (or dropped) once settled. [`Connection::send_all`] writes the end of
/// data (the final ".") of a transaction only once every mark handed in before it has settled;
/// the body may go ahead. The server takes a message only at its final "." (RFC 5321 §4.1.1.4:
/// before it, a lost connection aborts the transaction), so whoever feeds one connection (or one
/// connection after another) through the same `Marks` has at any moment at most one message the
/// server may have taken whose result is not settled: the last one whose "." went out. Every one
/// before it settled before that "." was written.
#[derive(Default)]
pub struct Marks {
    pending: std::collections::VecDeque<tokio::sync::oneshot::Receiver<()>>,
    /// Lowered by one while [`Marks::settled`] waits.
    running: Option<Arc<Running>>,
}

/// How many feeders may hand back a result any moment (the sender's connection workers with a
/// job, less those waiting on their marks), and a wakeup when none may.
#[derive(Default)]
pub struct Running {
    n: std::sync::atomic::AtomicUsize,
    none: tokio::sync::Notify,
}

impl Running {
    pub fn up(&self) {
        self.n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn down(&self) {
        if self.n.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.none.notify_one();
        }
    }

    pub fn is_none(&self) -> bool {
        self.n.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// Woken (at least) when the count falls to zero.
    pub async fn fell_to_none(&self) {
        self.none.notified().await
    }
}

impl Marks {
    /// Marks that lower `running` by one while they wait.
    pub fn counting(running: Arc<Running>) -> Marks {
        Marks {
            pending: Default::default(),
            running: Some(running),
        }
    }

    /// A message whose end of data went out: its result is settled when `mark` fires or drops.
    pub fn push(&mut self, mark: tokio::sync::oneshot::Receiver<()>) {
        self.pending.push_back(mark);
    }

    /// Whether some mark has not settled yet (drops those that have).
    pub fn pending(&mut self) -> bool {
        use tokio::sync::oneshot::error::TryRecvError;
        while let Some(m) = self.pending.front_mut() {
            match m.try_recv() {
                Err(TryRecvError::Empty) => return true,
                Ok(()) | Err(TryRecvError::Closed) => {
                    self.pending.pop_front();
                }
            }
        }
        false
    }

    /// Until every mark has settled.
    pub async fn settled(&mut self) {
        if let Some(r) = &self.running {
            r.down();
        }
        while let Some(m) = self.pending.pop_front() {
            let _ = m.await;
        }
        if let Some(r) = &self.running {
            r.up();
        }
    }
}

/// Where to connect and how.
#[derive(Clone)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// The name we give in EHLO.
    pub hello: String,
    pub credentials: Option<Credentials>,
}

#[derive(Clone)]
pub enum Security {
    None,
    /// Plain TCP, then STARTTLS before anything else; a server that does not offer it is refused.
    StartTls(Arc<rustls::ClientConfig>),
    /// TLS from the first byte (port 465).
    Tls(Arc<rustls::ClientConfig>),
}

/// Where in the session a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Tls,
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    EndOfData,
    Rset,
    Quit,
}

impl Stage {
    /// MAIL, RCPT, DATA and the end of data belong to one message; the rest to the connection.
    pub fn is_transaction(self) -> bool {
        matches!(
            self,
            Stage::Mail | Stage::Rcpt | Stage::Data | Stage::EndOfData
        )
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Tls => "TLS handshake",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::EndOfData => "end of data",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
        })
    }
}

#[derive(Debug, Clone)]
pub enum Failure {
    /// The server answered, and not as hoped: its own words.
    Reply(Reply),
    /// The connection failed or was closed.
    Io(String),
    Timeout(Duration),
    /// The server's bytes were not SMTP, or it lacks something we require (STARTTLS, AUTH).
    Protocol(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Reply(r) => write!(f, "{r}"),
            Failure::Io(e) => f.write_str(e),
            Failure::Timeout(d) => write!(f, "no answer within {} s", d.as_secs()),
            Failure::Protocol(e) => f.write_str(e),
        }
    }
}

/// A failed step: where and why. `Display`: `"RCPT TO: 550 5.1.1 <x@y>: ..."`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{host}: {stage}: {failure}")]
pub struct Error {
    pub host: String,
    pub stage: Stage,
    pub failure: Failure,
}

impl Error {
    /// The transport's problem, not this message's: anything before MAIL FROM (connect, TLS,
    /// greeting, EHLO, STARTTLS, AUTH — `535 5.7.8` included), a 421 (the server is closing the
    /// session) at any stage, and a 530 "authentication required" at any stage (our credentials,
    /// not the recipient). Another server, or the same one later, may take the same message.
    pub fn is_transport(&self) -> bool {
        if !self.stage.is_transaction() {
            return true;
        }
        matches!(&self.failure, Failure::Reply(r) if r.code == 421 || r.code == 530)
    }

    /// The server asks us to slow down: a 421 anywhere, or a 4.7.x answer to this message's
    /// MAIL, RCPT or DATA ("too many messages", "rate limited", greylisting). Nothing is wrong
    /// with the message or the transport; the sender waits and sends more slowly.
    pub fn is_throttle(&self) -> bool {
        match &self.failure {
            Failure::Reply(r) if r.code == 421 => true,
            Failure::Reply(r) => {
                self.stage.is_transaction()
                    && r.is_transient()
                    && r.enhanced_code().is_some_and(|c| c.starts_with("4.7."))
            }
            _ => false,
        }
    }

    /// A 5xx to this message's MAIL, RCPT or DATA (or its end): sending it again will not help.
    pub fn is_permanent(&self) -> bool {
        !self.is_transport() && matches!(&self.failure, Failure::Reply(r) if r.is_permanent())
    }

    pub fn reply(&self) -> Option<&Reply> {
        match &self.failure {
            Failure::Reply(r) => Some(r),
            _ => None,
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// One open, greeted (and, if configured, TLS-protected and authenticated) SMTP session.
pub struct Connection {
    host: String,
    stream: Stream,
    /// Bytes read and not yet parsed: `rbuf[rpos..]`.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Commands of one pipelined group; reused between transactions.
    wbuf: Vec<u8>,
    caps: Capabilities,
    /// The socket's send buffer size: the most command bytes we write before reading replies,
    /// so a server that does not read while it writes replies cannot deadlock us (Postfix's rule).
    send_buffer: usize,
    /// The session state is unknown (I/O error, timeout, 421, garbage): never used again.
    broken: bool,
    transactions: u64,
    last_used: Instant,
}

impl Connection {
    /// Connects, reads the greeting, says EHLO, upgrades with STARTTLS (and says EHLO again) and
    /// authenticates, as `server` says. Every error here is a transport error.
    pub async fn open(server: &Server) -> Result<Connection, Error> {
        let fail = |stage, failure| Error {
            host: format!("{}:{}", server.host, server.port),
            stage,
            failure,
        };
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((server.host.as_str(), server.port)),
        )
        .await
        .map_err(|_| fail(Stage::Connect, Failure::Timeout(CONNECT_TIMEOUT)))?
        .map_err(|e| fail(Stage::Connect, Failure::Io(e.to_string())))?;
        // Without TCP_NODELAY every command waits on Nagle and delayed ACK (~40 ms).
        tcp.set_nodelay(true)
            .map_err(|e| fail(Stage::Connect, Failure::Io(e.to_string())))?;
        let send_buffer = socket2::SockRef::from(&tcp)
            .send_buffer_size()
            .unwrap_or(16 * 1024)
            .max(1024);
        let stream = match &server.security {
            Security::Tls(cfg) => Stream::Tls(Box::new(
                tls_handshake(tcp, &server.host, cfg.clone())
                    .await
                    .map_err(|f| fail(Stage::Tls, f))?,
            )),
            Security::None | Security::StartTls(_) => Stream::Plain(tcp),
        };
        let mut c = Connection {
            host: format!("{}:{}", server.host, server.port),
            stream,
            rbuf: Vec::with_capacity(4096),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            caps: Capabilities::default(),
            send_buffer,
            broken: false,
            transactions: 0,
            last_used: Instant::now(),
        };
        let greeting = c.read_reply(Stage::Greeting).await?;
        if greeting.code != 220 {
            return Err(c.refused(Stage::Greeting, greeting));
        }
        c.hello(&server.hello).await?;
        if let Security::StartTls(cfg) = &server.security {
            if !c.caps.starttls {
                return Err(c.fail(
                    Stage::StartTls,
                    Failure::Protocol(
                        "the server does not offer STARTTLS (tls = \"starttls\" is required)"
                            .into(),
                    ),
                ));
            }
            c.write(Stage::StartTls, b"STARTTLS\r\n").await?;
            let r = c.read_reply(Stage::StartTls).await?;
            if r.code != 220 {
                return Err(c.refused(Stage::StartTls, r));
            }
            // Bytes after the 220 came before TLS and would be read as if protected: refuse
            // them (the STARTTLS command-injection class of bugs).
            if c.rpos < c.rbuf.len() {
                return Err(c.fail(
                    Stage::StartTls,
                    Failure::Protocol("the server sent more after its STARTTLS reply".into()),
                ));
            }
            let Stream::Plain(tcp) = c.stream else {
                return Err(fail(
                    Stage::StartTls,
                    Failure::Protocol("STARTTLS on a TLS connection".into()),
                ));
            };
            let tls = tls_handshake(tcp, &server.host, cfg.clone())
                .await
                .map_err(|f| fail(Stage::Tls, f))?;
            c.stream = Stream::Tls(Box::new(tls));
            c.rbuf.clear();
            c.rpos = 0;
            c.caps = Capabilities::default();
            c.hello(&server.hello).await?;
        }
        if let Some(creds) = &server.credentials {
            c.authenticate(creds).await?;
        }
        Ok(c)
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// False once the session state is unknown; such a connection is dropped, never reused.
    pub fn is_reusable(&self) -> bool {
        !self.broken
    }

    /// How long since the last transaction ended (or the connection was opened).
    pub fn idle_for(&self) -> Duration {
        self.last_used.elapsed()
    }

    /// Transactions started on this connection.
    pub fn transactions(&self) -> u64 {
        self.transactions
    }

    /// EHLO, or HELO when the server refuses EHLO with a 5xx (then no extensions).
    async fn hello(&mut self, name: &str) -> Result<(), Error> {
        self.write(Stage::Ehlo, format!("EHLO {name}\r\n").as_bytes())
            .await?;
        let r = self.read_reply(Stage::Ehlo).await?;
        if r.is_positive() {
            self.caps = Capabilities::from_ehlo(&r);
            return Ok(());
        }
        if !r.is_permanent() {
            return Err(self.refused(Stage::Ehlo, r));
        }
        self.write(Stage::Ehlo, format!("HELO {name}\r\n").as_bytes())
            .await?;
        let r = self.read_reply(Stage::Ehlo).await?;
        if !r.is_positive() {
            return Err(self.refused(Stage::Ehlo, r));
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    /// AUTH with the first mechanism we prefer among those offered. The server's refusal (say
    /// `535 5.7.8 authentication failed`) is kept as its words. Nothing here is logged: the
    /// lines carry the password.
    async fn authenticate(&mut self, creds: &Credentials) -> Result<(), Error> {
        let Some(mech) = Mechanism::choose(&self.caps.auth, creds) else {
            let offered = if self.caps.auth.is_empty() {
                "none".to_string()
            } else {
                self.caps.auth.join(" ")
            };
            let ours: Vec<&str> = Mechanism::usable(creds).iter().map(|m| m.name()).collect();
            return Err(self.fail(
                Stage::Auth,
                Failure::Protocol(format!(
                    "the server offers no AUTH mechanism we use ({}); it offers: {offered}",
                    ours.join(", ")
                )),
            ));
        };
        let mut line = Vec::new();
        match mech.initial_response(creds) {
            Some(ir) => proto::sasl_line(&format!("AUTH {}", mech.name()), &ir, &mut line),
            None => line.extend_from_slice(format!("AUTH {}\r\n", mech.name()).as_bytes()),
        }
        self.write(Stage::Auth, &line).await?;
        // A bearer mechanism's challenge is the server's reason for refusing the token (JSON,
        // e.g. {"status":"invalid_token"}); it is kept with the final refusal for the log.
        let mut reason: Option<String> = None;
        for step in 0.. {
            let mut r = self.read_reply(Stage::Auth).await?;
            match r.code {
                235 => return Ok(()),
                334 if step < 8 => {
                    let challenge = data_encoding::BASE64
                        .decode(r.lines.first().map_or("", |l| l.trim()).as_bytes())
                        .unwrap_or_default();
                    if mech.is_bearer() && !challenge.is_empty() {
                        let text = String::from_utf8_lossy(&challenge);
                        let text: String = text.chars().take(300).collect();
                        reason = Some(text);
                    }
                    line.clear();
                    match mech.respond(step, &challenge, creds) {
                        Ok(resp) => proto::sasl_line("", &resp, &mut line),
                        Err(e) => {
                            // "*" cancels the exchange (RFC 4954); the session is not reused
                            let _ = self.write(Stage::Auth, b"*\r\n").await;
                            self.broken = true;
                            return Err(self.fail(Stage::Auth, Failure::Protocol(e)));
                        }
                    }
                    self.write(Stage::Auth, &line).await?;
                }
                _ => {
                    if let Some(reason) = reason.take() {
                        r.lines.push(format!("({} error: {reason})", mech.name()));
                    }
                    return Err(self.refused(Stage::Auth, r));
                }
            }
        }
        Err(self.fail(Stage::Auth, Failure::Protocol("AUTH did not end".into())))
    }

    /// One transaction on its own (see [`Connection::send_all`]).
    pub async fn send(&mut self, t: &Transaction) -> Result<(), Error> {
        struct One(Option<Result<(), Error>>);
        impl Feed<&Transaction> for One {
            fn next(&mut self) -> Option<&'static Transaction> {
                None
            }
            fn done(&mut self, _: &Transaction, result: Result<(), Error>) {
                self.0 = Some(result);
            }
        }
        let mut one = One(None);
        self.send_all(t, &mut one).await;
        one.0.unwrap_or_else(|| {
            Err(Error {
                host: self.host.clone(),
                stage: Stage::Mail,
                failure: Failure::Protocol("no result".into()),
            })
        })
    }

    /// Runs `first`, then whatever `feed` has ready, each result handed to `feed.done` as soon
    /// as it is known. Every recipient must be accepted or the message is refused (the daemon
    /// sends one recipient per message).
    ///
    /// With PIPELINING (RFC 2920), a transaction's MAIL, RCPT and DATA go in one write and their
    /// replies are read in order; after the 354 the body goes out with the *next* transaction's
    /// commands behind it when one is ready (as Postfix does), so a busy connection costs one
    /// round trip per message. What is written before its replies are read never exceeds the
    /// socket's send buffer: a server that does not read while it writes replies cannot
    /// deadlock us. Without PIPELINING, the plain dialogue, one command at a time.
    ///
    /// After a refusal of MAIL, RCPT or DATA the session is reset (RSET) and goes on; after a
    /// lost connection, a timeout, a 421 or garbage it is not reused (`is_reusable`), and a
    /// transaction whose commands were written but not answered is handed back failed at MAIL
    /// with an I/O error: nothing of it was taken, so it may be sent again elsewhere.
    pub async fn send_all<T: Borrow<Transaction>>(&mut self, first: T, feed: &mut impl Feed<T>) {
        let mut cur = first;
        let mut commands_written = false;
        loop {
            if self.broken {
                let e = self.unusable();
                feed.done(cur, Err(e));
                return;
            }
            self.transactions += 1;
            let (result, chained) = if self.caps.pipelining {
                self.pipelined(cur.borrow(), commands_written, feed).await
            } else {
                (self.plain(cur.borrow(), feed.marks()).await, None)
            };
            if let Err(e) = &result {
                if e.is_transport() || !matches!(e.failure, Failure::Reply(_)) {
                    self.broken = true;
                }
                // the transaction is still open after a refused MAIL, RCPT or DATA
                if !self.broken && chained.is_none() && e.stage != Stage::EndOfData {
                    self.reset().await;
                }
            }
            self.last_used = Instant::now();
            feed.done(cur, result);
            (cur, commands_written) = match chained {
                Some(next) => next,
                // a broken connection takes nothing more from the feed
                None if self.broken => return,
                None => match feed.next() {
                    Some(next) => (next, false),
                    None => return,
                },
            };
        }
    }

    /// One transaction with PIPELINING. Returns its result and the next transaction if its
    /// commands went out behind this one's body (`true`) or it was taken from `feed` and not
    /// written yet (`false`).
    async fn pipelined<T: Borrow<Transaction>>(
        &mut self,
        t: &Transaction,
        commands_written: bool,
        feed: &mut impl Feed<T>,
    ) -> (Result<(), Error>, Option<(T, bool)>) {
        if !commands_written {
            let mut wbuf = std::mem::take(&mut self.wbuf);
            wbuf.clear();
            let queued = self.queue_commands(t, &mut wbuf);
            let written = match queued {
                // never more unanswered bytes than the send buffer holds
                Ok(()) if wbuf.len() > self.send_buffer => {
                    self.wbuf = wbuf;
                    return (self.plain(t, feed.marks()).await, None);
                }
                Ok(()) => self.write(Stage::Mail, &wbuf).await,
                Err(e) => Err(e),
            };
            self.wbuf = wbuf;
            if let Err(e) = written {
                return (Err(e), None);
            }
        }
        // the replies to MAIL, each RCPT and DATA, in order
        let mut refusal: Option<(Stage, Reply)> = None;
        let stages = std::iter::once(Stage::Mail)
            .chain(t.to.iter().map(|_| Stage::Rcpt))
            .chain(std::iter::once(Stage::Data));
        let mut data_reply = None;
        for stage in stages {
            let r = match self.read_reply(stage).await {
                Ok(r) => r,
                Err(e) => return (Err(e), None),
            };
            if r.code == 421 {
                self.broken = true;
                return (Err(self.refused(stage, r)), None);
            }
            match stage {
                Stage::Data => data_reply = Some(r),
                _ if !r.is_positive() && refusal.is_none() => refusal = Some((stage, r)),
                _ => {}
            }
        }
        let Some(data_reply) = data_reply else {
            return (
                Err(self.fail(Stage::Data, Failure::Protocol("no reply to DATA".into()))),
                None,
            );
        };
        if let Some((stage, reply)) = refusal {
            if data_reply.code == 354 {
                // RFC 2920 §3.1: DATA accepted although MAIL or every RCPT was refused. Send
                // the end of data alone: the server has an empty message with no valid
                // recipient and ends the transaction; the message is refused with the reply
                // that refused it.
                if let Err(e) = self.write(Stage::EndOfData, b".\r\n").await {
                    return (Err(e), None);
                }
                match self.read_reply(Stage::EndOfData).await {
                    Ok(end) if end.code == 421 => self.broken = true,
                    Ok(_) => {}
                    Err(e) => return (Err(e), None),
                }
            }
            return (Err(self.refused(stage, reply)), None);
        }
        if data_reply.code != 354 {
            return (Err(self.refused(Stage::Data, data_reply)), None);
        }
        // The body, and behind it the next transaction's commands if one is ready and the
        // whole write fits in the send buffer. The final "." waits until the results before
        // it are settled (`Marks`): then the body goes alone first.
        let ahead = match self.hold_end_of_data(&t.payload, feed.marks()).await {
            Ok(n) => n,
            Err(e) => return (Err(e), None),
        };
        let mut wbuf = std::mem::take(&mut self.wbuf);
        wbuf.clear();
        // what of the payload went ahead counts as unanswered too
        wbuf.extend_from_slice(&t.payload[ahead..]);
        let body_len = wbuf.len();
        let mut next = None;
        if t.payload.len() < self.send_buffer {
            if let Some(n) = feed.next() {
                match self.queue_commands(n.borrow(), &mut wbuf) {
                    Ok(()) if ahead + wbuf.len() <= self.send_buffer => next = Some((n, true)),
                    Ok(()) => {
                        wbuf.truncate(body_len);
                        next = Some((n, false));
                    }
                    Err(e) => {
                        wbuf.truncate(body_len);
                        feed.done(n, Err(e));
                    }
                }
            }
        }
        let written = self.write(Stage::EndOfData, &wbuf).await;
        self.wbuf = wbuf;
        let result = match written {
            Ok(()) => match self.read_reply(Stage::EndOfData).await {
                Ok(r) if r.is_positive() => Ok(()),
                Ok(r) => Err(self.refused(Stage::EndOfData, r)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        (result, next)
    }

    /// MAIL, RCPT… and DATA of `t`, appended to `out`.
    /// (A bad address fails only its own transaction: nothing was written.)
    fn queue_commands(&self, t: &Transaction, out: &mut Vec<u8>) -> Result<(), Error> {
        let bad = |stage, e| Error {
            host: self.host.clone(),
            stage,
            failure: Failure::Protocol(e),
        };
        proto::mail_from(&t.from, &self.caps, t.size, t.eight_bit, out)
            .map_err(|e| bad(Stage::Mail, e))?;
        for rcpt in &t.to {
            proto::rcpt_to(rcpt, out).map_err(|e| bad(Stage::Rcpt, e))?;
        }
        out.extend_from_slice(b"DATA\r\n");
        Ok(())
    }

    /// The error for a transaction that never got its turn on a connection that broke.
    fn unusable(&self) -> Error {
        Error {
            host: self.host.clone(),
            stage: Stage::Mail,
            failure: Failure::Io("the connection broke before this message's turn".into()),
        }
    }

    /// The dialogue one command at a time, for servers without PIPELINING.
    async fn plain(&mut self, t: &Transaction, marks: Option<&mut Marks>) -> Result<(), Error> {
        let mut line = Vec::with_capacity(128);
        proto::mail_from(&t.from, &self.caps, t.size, t.eight_bit, &mut line)
            .map_err(|e| self.fail(Stage::Mail, Failure::Protocol(e)))?;
        self.command(Stage::Mail, &line).await?;
        for rcpt in &t.to {
            line.clear();
            proto::rcpt_to(rcpt, &mut line)
                .map_err(|e| self.fail(Stage::Rcpt, Failure::Protocol(e)))?;
            self.command(Stage::Rcpt, &line).await?;
        }
        self.write(Stage::Data, b"DATA\r\n").await?;
        let r = self.read_reply(Stage::Data).await?;
        if r.code != 354 {
            return Err(self.refused(Stage::Data, r));
        }
        let ahead = self.hold_end_of_data(&t.payload, marks).await?;
        self.write(Stage::EndOfData, &t.payload[ahead..]).await?;
        let r = self.read_reply(Stage::EndOfData).await?;
        if r.is_positive() {
            Ok(())
        } else {
            Err(self.refused(Stage::EndOfData, r))
        }
    }

    /// When some mark has not settled: writes `payload` up to its final "." and waits until
    /// every mark has. Returns how much of `payload` went out: the rest (".\r\n", or all of it
    /// when every mark had settled already — one write for body and "." as before) is the
    /// caller's to write.
    async fn hold_end_of_data(
        &mut self,
        payload: &[u8],
        marks: Option<&mut Marks>,
    ) -> Result<usize, Error> {
        let Some(marks) = marks else {
            return Ok(0);
        };
        if !marks.pending() {
            return Ok(0);
        }
        // `proto::data_payload` ends every payload in CRLF "." CRLF
        let body = payload.len().saturating_sub(3);
        self.write(Stage::EndOfData, &payload[..body]).await?;
        marks.settled().await;
        Ok(body)
    }

    /// Writes one command and requires a 2xx.
    async fn command(&mut self, stage: Stage, line: &[u8]) -> Result<Reply, Error> {
        self.write(stage, line).await?;
        let r = self.read_reply(stage).await?;
        if r.is_positive() {
            Ok(r)
        } else {
            Err(self.refused(stage, r))
        }
    }

    /// RSET after a refused transaction; a connection whose RSET fails is not reused.
    async fn reset(&mut self) {
        let ok = match self.write(Stage::Rset, b"RSET\r\n").await {
            Ok(()) => self
                .read_reply(Stage::Rset)
                .await
                .is_ok_and(|r| r.is_positive()),
            Err(_) => false,
        };
        if !ok {
            self.broken = true;
        }
    }

    /// QUIT and close; errors do not matter any more.
    pub async fn quit(mut self) {
        if !self.broken && self.write(Stage::Quit, b"QUIT\r\n").await.is_ok() {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.read_reply(Stage::Quit)).await;
        }
        let _ = match &mut self.stream {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
        };
    }

    async fn write(&mut self, stage: Stage, bytes: &[u8]) -> Result<(), Error> {
        let res = tokio::time::timeout(WRITE_TIMEOUT, async {
            match &mut self.stream {
                Stream::Plain(s) => s.write_all(bytes).await,
                Stream::Tls(s) => {
                    s.write_all(bytes).await?;
                    s.flush().await
                }
            }
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.fail(stage, Failure::Io(e.to_string()))),
            Err(_) => Err(self.fail(stage, Failure::Timeout(WRITE_TIMEOUT))),
        }
    }

    async fn read_reply(&mut self, stage: Stage) -> Result<Reply, Error> {
        loop {
            match proto::parse_reply(&self.rbuf[self.rpos..]) {
                Ok(Some((reply, used))) => {
                    self.rpos += used;
                    if self.rpos == self.rbuf.len() {
                        self.rbuf.clear();
                        self.rpos = 0;
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(self.fail(stage, Failure::Protocol(e))),
            }
            if self.rpos > 0 {
                self.rbuf.drain(..self.rpos);
                self.rpos = 0;
            }
            self.rbuf.reserve(4096);
            let read = tokio::time::timeout(REPLY_TIMEOUT, async {
                match &mut self.stream {
                    Stream::Plain(s) => s.read_buf(&mut self.rbuf).await,
                    Stream::Tls(s) => s.read_buf(&mut self.rbuf).await,
                }
            })
            .await;
            match read {
                Ok(Ok(0)) => {
                    return Err(self.fail(
                        stage,
                        Failure::Io("the server closed the connection".into()),
                    ))
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(self.fail(stage, Failure::Io(e.to_string()))),
                Err(_) => return Err(self.fail(stage, Failure::Timeout(REPLY_TIMEOUT))),
            }
        }
    }

    /// An error that leaves the session unusable.
    fn fail(&mut self, stage: Stage, failure: Failure) -> Error {
        self.broken = true;
        Error {
            host: self.host.clone(),
            stage,
            failure,
        }
    }

    /// The server refused at `stage` (the session itself may still be fine).
    fn refused(&mut self, stage: Stage, reply: Reply) -> Error {
        if reply.code == 421 || !stage.is_transaction() {
            self.broken = true;
        }
        Error {
            host: self.host.clone(),
            stage,
            failure: Failure::Reply(reply),
        }
    }
}

async fn tls_handshake(
    tcp: TcpStream,
    host: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| Failure::Protocol(format!("{host:?} is not a TLS server name: {e}")))?;
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| Failure::Timeout(CONNECT_TIMEOUT))?
    .map_err(|e| Failure::Io(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// A server that offers PIPELINING, accepts everything, and reports each DATA line it
    /// receives (the end of data as ".").
    async fn server(
        listener: tokio::net::TcpListener,
        lines: tokio::sync::mpsc::UnboundedSender<String>,
        pipelining: bool,
    ) {
        let Ok((sock, _)) = listener.accept().await else {
            return;
        };
        let (r, mut w) = sock.into_split();
        let mut r = tokio::io::BufReader::new(r);
        let _ = w.write_all(b"220 test\r\n").await;
        let mut in_data = false;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end().to_string();
            let reply: &[u8] = if in_data {
                let _ = lines.send(l.clone());
                if l != "." {
                    continue;
                }
                in_data = false;
                b"250 queued\r\n"
            } else if l.starts_with("EHLO") && pipelining {
                b"250-test\r\n250 PIPELINING\r\n"
            } else if l == "DATA" {
                in_data = true;
                b"354 go\r\n"
            } else if l == "QUIT" {
                b"221 bye\r\n"
            } else {
                b"250 ok\r\n"
            };
            let _ = w.write_all(reply).await;
        }
    }

    /// Hands out transactions and, for each result, a mark the test fires.
    struct Held {
        queue: std::collections::VecDeque<Transaction>,
        marks: Marks,
        results: tokio::sync::mpsc::UnboundedSender<(bool, tokio::sync::oneshot::Sender<()>)>,
    }

    impl Feed<Transaction> for Held {
        fn next(&mut self) -> Option<Transaction> {
            self.queue.pop_front()
        }
        fn done(&mut self, _: Transaction, result: Result<(), Error>) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.marks.push(rx);
            let _ = self.results.send((result.is_ok(), tx));
        }
        fn marks(&mut self) -> Option<&mut Marks> {
            Some(&mut self.marks)
        }
    }

    #[tokio::test]
    async fn the_end_of_data_waits_until_the_result_before_it_is_settled() {
        // with PIPELINING and in the plain dialogue
        for pipelining in [true, false] {
            end_of_data_held(pipelining).await;
        }
    }

    async fn end_of_data_held(pipelining: bool) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(server(listener, lines_tx, pipelining));
        let server = Server {
            host: "127.0.0.1".into(),
            port,
            security: Security::None,
            hello: "client.test".into(),
            credentials: None,
        };
        let mut conn = Connection::open(&server)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(conn.capabilities().pipelining, pipelining);
        let t = |n: usize| {
            Transaction::new(
                "a@invited.test",
                vec!["b@invited.test".into()],
                format!("Subject: {n}\r\n\r\nbody {n}\r\n").as_bytes(),
            )
        };
        let (results_tx, mut results) = tokio::sync::mpsc::unbounded_channel();
        let mut feed = Held {
            queue: [t(2), t(3)].into(),
            marks: Marks::default(),
            results: results_tx,
        };
        let run = tokio::spawn(async move {
            conn.send_all(t(1), &mut feed).await;
        });
        let mut next_line = async || lines.recv().await.unwrap_or_else(|| panic!("server gone"));
        for want in ["Subject: 1", "", "body 1", "."] {
            assert_eq!(next_line().await, want);
        }
        let (ok, mark1) = results.recv().await.unwrap_or_else(|| panic!("no result"));
        assert!(ok);
        // message 2's body goes out, its end of data does not while message 1's is unsettled
        for want in ["Subject: 2", "", "body 2"] {
            assert_eq!(next_line().await, want);
        }
        let early = tokio::time::timeout(Duration::from_millis(200), next_line()).await;
        assert!(
            early.is_err(),
            "end of data before the mark settled: {early:?}"
        );
        let _ = mark1.send(());
        assert_eq!(next_line().await, ".");
        let (ok, mark2) = results.recv().await.unwrap_or_else(|| panic!("no result"));
        assert!(ok);
        // a dropped mark settles too
        drop(mark2);
        for want in ["Subject: 3", "", "body 3", "."] {
            assert_eq!(next_line().await, want);
        }
        let (ok, _) = results.recv().await.unwrap_or_else(|| panic!("no result"));
        assert!(ok);
        run.await.unwrap_or_else(|e| panic!("{e}"));
    }
}
